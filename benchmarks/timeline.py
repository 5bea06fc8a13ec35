"""Where bench.py's wall time goes: a per-step timeline of its workload, prefill throughput, time to first token.

Runs bench.py's workload (the same requests, temperature 0.6, ignore_eos) through an engine whose phases are timed
from outside: the tool wraps the engine's own methods on its instances, so the engine carries no hooks. Each
launched step gets a row of timeline.csv:

  host_schedule_ms  Scheduler.schedule / schedule_ahead (with the block manager) that made the step
  host_prepare_ms   ModelRunner._prefill_arrays / _decode_step: the step's host arrays
  host_forward_ms   ModelRunner._forward: the upload, then the kernels or the CUDA-graph replay, enqueued
                    (host_upload_ms of it: the graph's staging copy, which first waits for the last one's copies)
  host_sample_ms    ModelRunner._sample: the sampler's uploads and launches
  host_wait_ms      PendingTokens.token_ids: the host waiting for the step's sampled tokens
  host_postprocess_ms  Scheduler.postprocess of the step's tokens
  gpu_forward_ms, gpu_sample_ms, gpu_idle_before_ms  CUDA events around the forward and the sampling, and the
                    GPU's idle time between the previous step's end and this one's start
  graph_batch       the CUDA graph's batch (padded) of a decode step, blank when it ran eagerly
  floor_ms          a decode step's memory floor: every weight and every K/V byte of its batch read once, at the
                    measured copy bandwidth

Triton compiles met during the run (a kernel specialization seen for the first time) go to compiles.csv, with the
step they held up. Then: prefill throughput at 8192-token steps against the compute floor (2 * parameters * tokens at the measured
bf16 matmul rate; the LM head counted only for the prompts a step ends), and each request's time to first token
(requests.csv), all requests arriving at once as in bench.py. The summary is printed and written to summary.txt.

    python3 benchmarks/timeline.py --out timeline_out          # qwen3-0.6b, 256 requests, on a GPU
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from random import Random

import torch
from transformers import AutoConfig
from triton import knobs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import workload  # noqa: E402
from nanovllm import LLM, SamplingParams  # noqa: E402
from nanovllm.utils.random_checkpoint import SHAPES, cached_random_checkpoint  # noqa: E402

PREFILL_STEP_TOKENS = 8192


@dataclass
class StepRecord:
    """One launched step; the host fields are milliseconds spent on it, wherever the engine spent them."""
    index: int
    kind: str  # prefill, decode (eager) or graph
    num_seqs: int
    tokens: int  # prompt tokens computed (prefill) or sequences decoded
    sampled: int  # rows sampled: the sequences whose prompt the step ends, or every decoded one
    context_tokens: int  # tokens of K/V the step's attention reads
    graph_batch: int | None
    launch_s: float  # since the run began
    host_schedule_ms: float = 0.0
    host_prepare_ms: float = 0.0
    host_forward_ms: float = 0.0
    host_upload_ms: float = 0.0
    host_sample_ms: float = 0.0
    host_wait_ms: float = 0.0
    host_postprocess_ms: float = 0.0
    gpu_forward_ms: float | None = None
    gpu_sample_ms: float | None = None
    gpu_idle_before_ms: float | None = None
    floor_ms: float | None = None
    events: list = field(default_factory=list, repr=False)


COLUMNS = [f.name for f in fields(StepRecord) if f.name != "events"]


class Timeline:
    """Times an engine's phases by wrapping its methods on the instances (`install`; `remove` puts them back)."""

    def __init__(self, llm: LLM):
        self.llm = llm
        self.cuda = llm.model_runner.device.type == "cuda"
        self.steps: list[StepRecord] = []
        self.first_token_s: dict[int, float] = {}
        self.calls: list[tuple[float, float]] = []  # LLMEngine.step's start and end
        self.start = time.perf_counter()
        self._schedule_ms = 0.0  # scheduling not yet charged to a launched step
        self._launching: StepRecord | None = None
        self._read: StepRecord | None = None  # the step whose tokens were read last
        self._wrapped: list[tuple[object, str]] = []
        # Triton compiles during the run (a kernel specialization met for the first time): step, kernel, seconds.
        self.compiles: list[dict] = []
        self._compile_start = 0.0
        self._saved_hooks = None

    def _wrap(self, obj, name: str, around) -> None:
        original = getattr(obj, name)

        def wrapper(*args, **kwargs):
            return around(original, *args, **kwargs)

        setattr(obj, name, wrapper)
        self._wrapped.append((obj, name))

    def install(self) -> None:
        llm, runner, scheduler = self.llm, self.llm.model_runner, self.llm.scheduler
        self.start = time.perf_counter()
        self._wrap(llm, "step", self._step)
        self._wrap(scheduler, "schedule", self._schedule)
        self._wrap(scheduler, "schedule_ahead", self._schedule)
        self._wrap(scheduler, "postprocess", self._postprocess)
        self._wrap(runner, "launch", self._launch)
        self._wrap(runner, "_prefill_arrays", self._prepare)
        self._wrap(runner, "_decode_step", self._prepare)
        self._wrap(runner, "_forward", self._forward)
        self._wrap(runner, "_sample", self._sample)
        if runner.graphs is not None:
            self._wrap(runner.graphs, "_upload", self._upload)
        hooks = knobs.runtime
        self._saved_hooks = hooks.jit_cache_hook, hooks.jit_post_compile_hook
        hooks.jit_cache_hook, hooks.jit_post_compile_hook = self._compile_begins, self._compile_ends

    def remove(self) -> None:
        for obj, name in reversed(self._wrapped):
            delattr(obj, name)  # the class's method shows through again
        self._wrapped.clear()
        if self._saved_hooks is not None:
            knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = self._saved_hooks
            self._saved_hooks = None

    def _compile_begins(self, **kwargs) -> bool:
        self._compile_start = time.perf_counter()
        return False  # go on and compile

    def _compile_ends(self, *, repr: str, fn, **kwargs) -> None:
        self.compiles.append({"step": len(self.steps) - 1, "kernel": fn.name,
                              "seconds": round(time.perf_counter() - self._compile_start, 3), "signature": repr})

    def _event(self):
        if not self.cuda:
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _step(self, original):
        start = time.perf_counter()
        try:
            return original()
        finally:
            self.calls.append((start - self.start, time.perf_counter() - self.start))

    def _schedule(self, original, *args):
        start = time.perf_counter()
        result = original(*args)
        self._schedule_ms += (time.perf_counter() - start) * 1e3
        return result

    def _launch(self, original, seqs, is_prefill, previous=None):
        if is_prefill:
            tokens = sum(seq.num_scheduled_tokens for seq in seqs)
            ends = [seq.num_computed_tokens + seq.num_scheduled_tokens for seq in seqs]
            sampled, context = sum(end == len(seq) for end, seq in zip(ends, seqs)), sum(ends)
        else:
            tokens, sampled, context = len(seqs), len(seqs), sum(len(seq) for seq in seqs)
        record = StepRecord(len(self.steps), "prefill" if is_prefill else "decode", len(seqs), tokens, sampled,
                            context, None, time.perf_counter() - self.start, host_schedule_ms=self._schedule_ms)
        self._schedule_ms = 0.0
        self.steps.append(record)
        self._launching = record
        try:
            pending = original(seqs, is_prefill, previous)
        finally:
            self._launching = None
        self._wrap_pending(pending, record)
        return pending

    def _wrap_pending(self, pending, record: StepRecord) -> None:
        original = pending.token_ids

        def token_ids():
            start = time.perf_counter()
            try:
                return original()
            finally:
                record.host_wait_ms += (time.perf_counter() - start) * 1e3
                self._read = record

        pending.token_ids = token_ids

    def _prepare(self, original, seqs):
        start = time.perf_counter()
        result = original(seqs)
        record = self._launching
        if record is not None:
            record.host_prepare_ms += (time.perf_counter() - start) * 1e3
            if getattr(result, "kind", None) == "graph":
                record.kind, record.graph_batch = "graph", result.arrays[0].size // 3  # int64 rows: 3 per sequence
        return result

    def _forward(self, original, *args):
        record = self._launching
        start = time.perf_counter()
        begin = self._event()
        result = original(*args)
        if record is not None:
            record.host_forward_ms += (time.perf_counter() - start) * 1e3
            if self.cuda:
                record.events = [begin, self._event()]
        return result

    def _upload(self, original, *args):
        start = time.perf_counter()
        original(*args)
        if self._launching is not None:
            self._launching.host_upload_ms += (time.perf_counter() - start) * 1e3

    def _sample(self, original, *args):
        record = self._launching
        start = time.perf_counter()
        result = original(*args)
        if record is not None:
            record.host_sample_ms += (time.perf_counter() - start) * 1e3
            if self.cuda:
                record.events.append(self._event())
        return result

    def _postprocess(self, original, seqs, token_ids):
        start = time.perf_counter()
        original(seqs, token_ids)
        now = time.perf_counter()
        if self._read is not None:
            self._read.host_postprocess_ms += (now - start) * 1e3
        for seq in seqs:
            if seq.num_completion_tokens >= 1 and seq.seq_id not in self.first_token_s:
                self.first_token_s[seq.seq_id] = now - self.start

    def resolve(self, weight_bytes: float | None, kv_bytes_per_token: float | None,
                copy_gbps: float | None) -> None:
        """GPU times from the events (after a synchronize), and each decode step's memory floor."""
        if self.cuda:
            torch.cuda.synchronize()
        previous_end = None
        for record in self.steps:
            if record.events:
                begin, forward_end, *rest = record.events
                end = rest[0] if rest else forward_end
                record.gpu_forward_ms = begin.elapsed_time(forward_end)
                record.gpu_sample_ms = forward_end.elapsed_time(end) if rest else 0.0
                if previous_end is not None:
                    record.gpu_idle_before_ms = max(0.0, previous_end.elapsed_time(begin))
                previous_end = end
            record.events = []
            if record.kind != "prefill" and copy_gbps:
                record.floor_ms = (weight_bytes + kv_bytes_per_token * record.context_tokens) / (copy_gbps * 1e6)


def model_bytes(llm: LLM) -> tuple[int, int, int]:
    """(bytes a decode step reads of the weights, K/V bytes per token, parameters a prompt token multiplies)."""
    runner = llm.model_runner
    model = runner.model
    embed = model.model.embed_tokens.weight
    head = model.lm_head.weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed)
    if embed is head:
        weights += embed.numel() * embed.element_size()
    body = sum(p.numel() for p in model.parameters() if p is not embed and p is not head)
    return weights, runner._block_bytes() // runner.block_size, body


def percentiles(values: list[float], qs=(50, 90, 99)) -> list[float]:
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] for q in qs]


def write_csv(path: str, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def measure_prefill(llm: LLM, vocab_size: int, num_prompts: int, mm_tflops: float | None, body_params: int,
                    hidden: int, vocab: int) -> list[str]:
    """Prefill alone at 8192-token steps: the workload's prompt lengths, fresh tokens (no prefix-cache hits)."""
    rng = Random(1)
    prompts = [[rng.randrange(vocab_size) for _ in range(rng.randint(100, 1024))] for _ in range(num_prompts)]
    scheduler = llm.scheduler
    saved = scheduler.max_num_batched_tokens
    scheduler.max_num_batched_tokens = PREFILL_STEP_TOKENS
    timeline = Timeline(llm)
    timeline.install()
    try:
        for p in prompts:
            llm.add_request(p, SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=2))
        while scheduler.waiting:
            llm.step()
    finally:
        timeline.remove()
        llm.abort_all()
        scheduler.max_num_batched_tokens = saved
    timeline.resolve(None, None, None)
    full = [r for r in timeline.steps if r.kind == "prefill" and r.tokens == PREFILL_STEP_TOKENS]
    if not full:
        return ["prefill: no full 8192-token step (too few prompts)"]
    gpu = [r.gpu_forward_ms + r.gpu_sample_ms if r.gpu_forward_ms is not None else r.host_forward_ms for r in full]
    ms = statistics.median(gpu)
    ended = statistics.median(r.sampled for r in full)
    lines = [f"prefill at {PREFILL_STEP_TOKENS}-token steps: {len(full)} steps, median {ms:.2f} ms "
             f"(range {min(gpu):.2f}-{max(gpu):.2f}): {PREFILL_STEP_TOKENS / ms * 1e3:,.0f} tok/s"]
    if mm_tflops:
        flops = 2 * body_params * PREFILL_STEP_TOKENS + 2 * hidden * vocab * ended
        floor_ms = flops / (mm_tflops * 1e9)
        lines.append(f"  compute floor (2 x {body_params / 1e9:.3f} B params x tokens + LM head for the median {ended:.0f} "
                     f"prompts ended, at {mm_tflops:.0f} TFLOP/s bf16 matmul): {floor_ms:.2f} ms: "
                     f"{100 * floor_ms / ms:.0f}% of the floor")
    return lines


def summarize(timeline: Timeline, wall: float, num_tokens: int) -> list[str]:
    steps = timeline.steps
    lines = [f"run: {num_tokens} output tokens in {wall:.2f} s: {num_tokens / wall:,.0f} tok/s (timed, instrumented); "
             f"{len(steps)} steps launched, {len(timeline.calls)} engine steps"]

    def share(seconds: float) -> str:
        return f"{seconds:7.2f} s {100 * seconds / wall:5.1f}%"

    host = {name: sum(getattr(r, f"host_{name}_ms") for r in steps) / 1e3
            for name in ("schedule", "prepare", "forward", "sample", "wait", "postprocess")}
    in_steps = sum(end - start for start, end in timeline.calls)
    lines.append("host, where the wall time goes:")
    labels = {"schedule": "scheduling + block manager", "prepare": "input arrays (prepare)",
              "forward": "forward enqueue (upload, kernels / graph replay)", "sample": "sampler launches",
              "wait": "waiting for sampled tokens (GPU busy)", "postprocess": "postprocess"}
    for name, label in labels.items():
        extra = ""
        if name == "forward":
            extra = f"  (of it, graph staging upload {sum(r.host_upload_ms for r in steps) / 1e3:.2f} s)"
        lines.append(f"  {label:<50}{share(host[name])}{extra}")
    lines.append(f"  {'rest of LLMEngine.step':<50}{share(in_steps - sum(host.values()))}")
    lines.append(f"  {'outside LLMEngine.step (generate loop)':<50}{share(wall - in_steps)}")
    if steps and steps[0].gpu_forward_ms is not None:
        lines.append("GPU:")
        prefill = [r for r in steps if r.kind == "prefill"]
        decode = [r for r in steps if r.kind != "prefill"]
        busy = 0.0
        for label, group in (("prefill forward", prefill), ("decode forward", decode)):
            seconds = sum(r.gpu_forward_ms for r in group) / 1e3
            busy += seconds
            lines.append(f"  {label:<50}{share(seconds)}  ({len(group)} steps)")
        seconds = sum(r.gpu_sample_ms for r in steps) / 1e3
        busy += seconds
        lines.append(f"  {'sampling':<50}{share(seconds)}")
        idle = sum(r.gpu_idle_before_ms or 0.0 for r in steps) / 1e3
        lines.append(f"  {'idle between steps':<50}{share(idle)}")
        lines.append(f"  {'before the first / after the last step':<50}{share(max(0.0, wall - busy - idle))}")
        floor = sum(r.floor_ms for r in decode if r.floor_ms) / 1e3
        if floor:
            lines.append(f"  decode memory floor {floor:.2f} s: the decode forwards run at "
                         f"{100 * floor / max(1e-9, sum(r.gpu_forward_ms for r in decode) / 1e3):.0f}% of it")
        if prefill:
            tokens = sum(r.tokens for r in prefill)
            seconds = sum(r.gpu_forward_ms + r.gpu_sample_ms for r in prefill) / 1e3
            lines.append(f"  the workload's prefill: {tokens} tokens in {len(prefill)} steps, "
                         f"{tokens / seconds:,.0f} tok/s of GPU time")
    compile_s = sum(c["seconds"] for c in timeline.compiles)
    kernels = sorted({c["kernel"] for c in timeline.compiles})
    lines.append(f"Triton compiles during the run: {len(timeline.compiles)}, {share(compile_s)}"
                 + (f" ({', '.join(kernels)})" if kernels else ""))
    lines.append("decode steps by batch (graph padding, per-step medians in ms):")
    lines.append(f"  {'batch':>9} {'steps':>6} {'padded%':>8} {'gpu_fwd':>8} {'sample':>7} {'idle':>6} {'floor':>7} "
                 f"{'%floor':>7} {'host':>6} {'wait':>6} {'sched':>6} {'prep':>6} {'post':>6}")
    buckets = defaultdict(list)
    for r in steps:
        if r.kind != "prefill":
            low = 1 if r.num_seqs <= 16 else (r.num_seqs - 1) // 32 * 32 + 1
            buckets[low].append(r)
    for low in sorted(buckets):
        group = buckets[low]
        high = 16 if low == 1 else low + 31

        def med(name: str) -> float:
            values = [getattr(r, name) for r in group if getattr(r, name) is not None]
            return statistics.median(values) if values else float("nan")

        padded = [r for r in group if r.graph_batch]
        pad = 100 * (1 - sum(r.num_seqs for r in padded) / sum(r.graph_batch for r in padded)) if padded else 0.0
        host_ms = statistics.median(r.host_schedule_ms + r.host_prepare_ms + r.host_forward_ms + r.host_sample_ms
                                    + r.host_postprocess_ms for r in group)
        gpu, floor = med("gpu_forward_ms"), med("floor_ms")
        lines.append(f"  {low:>4}-{high:<4} {len(group):>6} {pad:>7.1f}% {gpu:>8.2f} {med('gpu_sample_ms'):>7.2f} "
                     f"{med('gpu_idle_before_ms'):>6.2f} {floor:>7.2f} {100 * floor / gpu:>6.0f}% {host_ms:>6.2f} "
                     f"{med('host_wait_ms'):>6.2f} {med('host_schedule_ms'):>6.2f} {med('host_prepare_ms'):>6.2f} "
                     f"{med('host_postprocess_ms'):>6.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder (default: a random checkpoint of --shape)")
    parser.add_argument("--shape", default="qwen3-0.6b", choices=sorted(SHAPES))
    parser.add_argument("--num_seqs", type=int, default=256, help="number of requests (the first N of the workload)")
    parser.add_argument("--prefill_prompts", type=int, default=64,
                        help="prompts of the prefill-throughput run (0: skip it)")
    parser.add_argument("--enforce_eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--variant", choices=["tuned", "baseline"], default="tuned",
                        help="tuned: the fused kernels with the GPU's table (the default engine); baseline: the "
                             "separate RMSNorm + cuBLAS path (fused_norm_linear=False)")
    parser.add_argument("--out", required=True, help="folder for timeline.csv, requests.csv and summary.txt")
    args = parser.parse_args()
    if args.num_seqs < 1:
        parser.error(f"--num_seqs must be >= 1, got {args.num_seqs}")
    if args.prefill_prompts < 0:
        parser.error(f"--prefill_prompts must be >= 0, got {args.prefill_prompts}")
    os.makedirs(args.out, exist_ok=True)
    copy_gbps = mm_tflops = None
    if torch.cuda.is_available():
        from benchmarks.common import measure_ceilings  # GPU only
        copy_gbps, mm_tflops = measure_ceilings()
        torch.cuda.empty_cache()
    path = args.model or cached_random_checkpoint(args.shape)
    hf = AutoConfig.from_pretrained(path)
    # On the CPU the fused kernel would run in Triton's interpreter, far too slow for this workload.
    kwargs = {"fused_norm_linear": False} if args.variant == "baseline" or not torch.cuda.is_available() else {}
    llm = LLM(path, enforce_eager=args.enforce_eager, max_model_len=4096, **kwargs)
    llm.generate([[1, 2, 3]], SamplingParams(), use_tqdm=False)
    weight_bytes, kv_bytes, body_params = model_bytes(llm)
    lines = [f"model: {path} ({args.variant})", f"device: {torch.cuda.get_device_name() if copy_gbps else 'cpu'}"
             + (f"; copy {copy_gbps:,.0f} GB/s, bf16 matmul {mm_tflops:.0f} TFLOP/s" if copy_gbps else "")]

    prompts, output_lens = workload(args.num_seqs, hf.vocab_size)
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n) for n in output_lens]
    timeline = Timeline(llm)
    timeline.install()
    start = time.perf_counter()
    try:
        outputs = llm.generate(prompts, params, use_tqdm=False)
    finally:
        timeline.remove()
    wall = time.perf_counter() - start
    timeline.resolve(weight_bytes, kv_bytes, copy_gbps)
    num_tokens = sum(len(o["token_ids"]) for o in outputs)
    lines += summarize(timeline, wall, num_tokens)
    write_csv(os.path.join(args.out, "timeline.csv"), COLUMNS, [asdict(r) for r in timeline.steps])
    write_csv(os.path.join(args.out, "compiles.csv"), ["step", "kernel", "seconds", "signature"], timeline.compiles)

    first = sorted(timeline.first_token_s.items())  # by seq_id: the requests' order
    ttft = [t for _, t in first]
    p50, p90, p99 = percentiles(ttft)
    lines.append(f"time to first token, all {len(ttft)} requests arriving at once: median {p50:.2f} s, p90 {p90:.2f}, "
                 f"p99 {p99:.2f}, max {max(ttft):.2f}")
    write_csv(os.path.join(args.out, "requests.csv"), ["request", "prompt_tokens", "output_tokens", "ttft_s"],
              [{"request": i, "prompt_tokens": len(p), "output_tokens": n, "ttft_s": round(t, 4)}
               for i, (p, n, t) in enumerate(zip(prompts, output_lens, ttft))])
    if args.prefill_prompts:
        lines += measure_prefill(llm, hf.vocab_size, args.prefill_prompts, mm_tflops, body_params, hf.hidden_size,
                                 hf.vocab_size)
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.out, "summary.txt"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
