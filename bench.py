"""Throughput benchmark: nano-vLLM's workload, optionally side by side with Hugging Face continuous batching.

Workload (as nano-vLLM's bench.py): random seed 0; 256 sequences; prompt and output lengths uniform in 100..1024;
prompt tokens uniform in 0..10000; ignore_eos. Throughput = output tokens / wall time.
"""
import argparse
import gc
import time
from random import randint, seed

import torch
from transformers import AutoConfig

from benchmarks.common import copy_bandwidth_gbps
from nanovllm import LLM, SamplingParams
from nanovllm.utils.random_checkpoint import SHAPES, cached_random_checkpoint


def workload(num_seqs: int, vocab_size: int) -> tuple[list[list[int]], list[int]]:
    """The first `num_seqs` requests; token ids wrap around a vocabulary smaller than 10001 (tiny test models)."""
    seed(0)
    prompts = [[randint(0, 10000) % vocab_size for _ in range(randint(100, 1024))] for _ in range(num_seqs)]
    output_lens = [randint(100, 1024) for _ in range(num_seqs)]
    return prompts, output_lens


def run_nanovllm(path: str, prompts, output_lens, enforce_eager: bool) -> float:
    llm = LLM(path, enforce_eager=enforce_eager, max_model_len=4096)
    llm.generate(["Benchmark: "], SamplingParams(), use_tqdm=False)
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n) for n in output_lens]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    num_tokens = sum(len(o["token_ids"]) for o in outputs)
    print(f"nano-vLLM: {num_tokens} output tokens in {elapsed:.2f} s: {num_tokens / elapsed:.1f} tok/s")
    del llm
    return num_tokens / elapsed


def run_hf(path: str, prompts, output_lens) -> float:
    """The same requests through transformers' continuous batching (sdpa attention, checkpoint dtype, greedy)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto", attn_implementation="sdpa").cuda().eval()
    config = GenerationConfig(max_new_tokens=max(output_lens), do_sample=False, eos_token_id=None, pad_token_id=0)
    num_tokens = 0
    with model.continuous_batching_context_manager(generation_config=config, block=True, timeout=5) as manager:
        start = time.perf_counter()
        for ids, n in zip(prompts, output_lens):
            manager.add_request(ids, max_new_tokens=n)
        for _ in prompts:
            while (result := manager.get_result(timeout=1)) is None or not result.is_finished():
                if result is None and not manager.is_running():
                    raise RuntimeError("transformers' continuous batching thread stopped early")
            num_tokens += len(result.generated_tokens)
        elapsed = time.perf_counter() - start
    print(f"HF transformers continuous batching: {num_tokens} output tokens in {elapsed:.2f} s: "
          f"{num_tokens / elapsed:.1f} tok/s")
    return num_tokens / elapsed


def run_decode_latency(path: str, enforce_eager: bool, prompt_len: int = 128,
                       output_len: int = 256) -> tuple[float, float]:
    """Batch-1 greedy decode: time per token against the floor of reading every weight once per token.
    Returns (seconds per decode step, floor seconds)."""
    llm = LLM(path, enforce_eager=enforce_eager, max_model_len=prompt_len + output_len, max_num_seqs=1)
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=output_len)
    llm.generate([[1] * prompt_len], params, use_tqdm=False)
    llm.add_request([1] * prompt_len, params)
    llm.step()  # prefill
    torch.cuda.synchronize()
    start = time.perf_counter()
    num_steps = 0
    while not llm.is_finished():
        llm.step()
        num_steps += 1
    step_s = (time.perf_counter() - start) / num_steps
    model = llm.model_runner.model
    # A decode step reads every weight once, except the input embedding (one row) when it is not the LM head too.
    embed = model.model.embed_tokens.weight
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed)
    if embed is model.lm_head.weight:
        weight_bytes += embed.numel() * embed.element_size()
    floor_s = weight_bytes / (copy_bandwidth_gbps() * 1e9)
    print(f"batch-1 decode: {step_s * 1e3:.2f} ms/token ({1 / step_s:.1f} tok/s); weights {weight_bytes / 1e9:.2f} GB, "
          f"weight-read floor {floor_s * 1e3:.2f} ms/token: {100 * floor_s / step_s:.1f}% of the floor")
    graphs = llm.model_runner.graphs
    if graphs is not None:
        replay_s = graph_replay_seconds(graphs.graphs[graphs.batch_sizes[0]])
        print(f"the decode graph alone (replayed back to back): {replay_s * 1e3:.2f} ms, "
              f"{100 * floor_s / replay_s:.1f}% of the floor; the host's part of a step: "
              f"{(step_s - replay_s) * 1e3:.2f} ms")
    return step_s, floor_s


def graph_replay_seconds(graph: torch.cuda.CUDAGraph, replays: int = 50) -> float:
    """GPU time of one replay of the last step's graph on its last inputs (it rewrites the same KV slot)."""
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / replays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder (default: a random checkpoint of --shape)")
    parser.add_argument("--shape", default="qwen3-0.6b", choices=sorted(SHAPES))
    parser.add_argument("--num_seqs", type=int, default=256, help="number of requests (the first N of the workload)")
    parser.add_argument("--peer", choices=["hf"], help="also run Hugging Face continuous batching")
    parser.add_argument("--peer_num_seqs", type=int, default=32, help="requests for the (slow) HF peer")
    parser.add_argument("--enforce_eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--decode_latency", action="store_true",
                        help="instead of throughput: batch-1 decode time per token against the weight-read floor")
    args = parser.parse_args()
    if (args.peer or args.decode_latency) and not torch.cuda.is_available():
        parser.error("--peer hf and --decode_latency need a CUDA device")
    path = args.model or cached_random_checkpoint(args.shape)
    print(f"model: {path}")
    if args.decode_latency:
        run_decode_latency(path, args.enforce_eager)
        return
    vocab_size = AutoConfig.from_pretrained(path).vocab_size
    prompts, output_lens = workload(args.num_seqs, vocab_size)
    ours = run_nanovllm(path, prompts, output_lens, args.enforce_eager)
    if args.peer == "hf":
        gc.collect()
        torch.cuda.empty_cache()
        peer_prompts, peer_lens = workload(args.peer_num_seqs, vocab_size)
        if args.peer_num_seqs != args.num_seqs:
            ours = run_nanovllm(path, peer_prompts, peer_lens, args.enforce_eager)
            gc.collect()
            torch.cuda.empty_cache()
        theirs = run_hf(path, peer_prompts, peer_lens)
        print(f"nano-vLLM / HF on the same {args.peer_num_seqs} requests: {ours / theirs:.1f}x")


if __name__ == "__main__":
    main()
