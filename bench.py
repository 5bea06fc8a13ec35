"""Throughput benchmark: nano-vLLM's workload, optionally side by side with Hugging Face continuous batching.

Workload (as nano-vLLM's bench.py): random seed 0; 256 sequences; prompt and output lengths uniform in 100..1024;
prompt tokens uniform in 0..10000; temperature 0.6, ignore_eos. Throughput = output tokens / wall time. Both engines
are warmed up and sample alike (benchmarks/serving.py, benchmarks/peers.py). --decode_latency instead times
batch-1 decode against the weight-read floor (with --peer hf also transformers' generate() with a static cache).
benchmarks/reproduce.py runs both as the README's figures.
"""
import argparse
import gc
import statistics

import torch
from transformers import AutoConfig

from benchmarks.common import copy_bandwidth_gbps, gpu_name
from benchmarks.serving import datasheet_gbps, decode_latency, throughput, workload
from nanovllm.utils.random_checkpoint import SHAPES, cached_random_checkpoint


def free_gpu() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def report_decode(args, path: str) -> None:
    ours = decode_latency(path, args.repeats, args.enforce_eager)
    bandwidth = copy_bandwidth_gbps()
    floors = {"measured copy": bandwidth, "datasheet": datasheet_gbps(gpu_name())}
    step = statistics.median(ours.step_s)
    print(f"batch-1 decode: {step * 1e3:.2f} ms/token ({1 / step:.1f} tok/s), median of {args.repeats}; weights "
          f"{ours.weight_bytes / 1e9:.2f} GB")
    if ours.replay_s is not None:
        print(f"the decode graph alone (replayed back to back): {ours.replay_s * 1e3:.2f} ms; the host's part of a "
              f"step: {(step - ours.replay_s) * 1e3:.2f} ms")
    engines = {"nano-vllm-coconut": step}
    if args.peer == "hf":
        from benchmarks.peers import hf_decode_latency

        free_gpu()
        engines["HF transformers, static cache"] = statistics.median(hf_decode_latency(path, args.repeats))
    for engine, seconds in engines.items():
        for name, gbps in floors.items():
            if gbps is not None:
                floor = ours.weight_bytes / (gbps * 1e9)
                print(f"{engine}: {seconds * 1e3:.2f} ms/token, {100 * floor / seconds:.1f}% of the weight-read "
                      f"floor at the {name} bandwidth ({gbps:,.0f} GB/s: {floor * 1e3:.2f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder (default: a random checkpoint of --shape)")
    parser.add_argument("--shape", default="qwen3-0.6b", choices=sorted(SHAPES))
    parser.add_argument("--num_seqs", type=int, default=256, help="number of requests (the first N of the workload)")
    parser.add_argument("--peer", choices=["hf"], help="also run Hugging Face transformers")
    parser.add_argument("--peer_num_seqs", type=int, default=32, help="requests for the (slow) HF peer")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each engine (the median is reported)")
    parser.add_argument("--enforce_eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--decode_latency", action="store_true",
                        help="instead of throughput: batch-1 decode time per token against the weight-read floor")
    args = parser.parse_args()
    if args.num_seqs < 1 or args.peer_num_seqs < 1 or args.repeats < 1:
        parser.error("--num_seqs, --peer_num_seqs and --repeats must be >= 1")
    if (args.peer or args.decode_latency) and not torch.cuda.is_available():
        parser.error("--peer hf and --decode_latency need a CUDA device")
    path = args.model or cached_random_checkpoint(args.shape)
    print(f"model: {path}")
    if args.decode_latency:
        report_decode(args, path)
        return
    vocab_size = AutoConfig.from_pretrained(path).vocab_size
    prompts, output_lens = workload(args.num_seqs, vocab_size)
    ours = statistics.median(throughput(path, prompts, output_lens, args.repeats, args.enforce_eager))
    if args.peer == "hf":
        from benchmarks.peers import hf_throughput

        free_gpu()
        peer_prompts, peer_lens = workload(args.peer_num_seqs, vocab_size)
        if args.peer_num_seqs != args.num_seqs:
            ours = statistics.median(throughput(path, peer_prompts, peer_lens, args.repeats, args.enforce_eager))
            free_gpu()
        theirs = statistics.median(hf_throughput(path, peer_prompts, peer_lens, args.repeats))
        print(f"nano-vLLM / HF on the same {args.peer_num_seqs} requests: {ours / theirs:.1f}x")


if __name__ == "__main__":
    main()
