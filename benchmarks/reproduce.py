"""Every figure the README quotes, measured on this GPU into one CSV per figure (GPU only).

    python3 benchmarks/reproduce.py                       # the default parts, as run 1
    python3 benchmarks/reproduce.py --run 2               # again, kept beside run 1 (on another machine if one can
                                                          # be had)
    python3 benchmarks/reproduce.py --part grid-mistral-7b grid-llama-13b grid-qwen3-0.6b
    python3 benchmarks/reproduce.py --smoke --out /tmp/s  # every part at a tiny size: a check, not figures

Parts (one H200; the first load of a model also builds its random-weight checkpoint):
- decode (~3 min): batch-1 llama-7b decode, 128-token prompt, 256 tokens, 5 repeats: ours (the shipped table)
  and Hugging Face transformers' generate() with a static KV cache (its decoding step compiled), each against the
  weight-read floor at the measured copy bandwidth and at the datasheet bandwidth;
- throughput (~3 min): nano-vLLM's workload (qwen3-0.6b shape, 256 requests) through ours, 3 repeats; its first
  32 requests through ours and through transformers' continuous batching (warmed up, same sampling), 2 repeats;
- grid-<model> (~5-6 min for llama-7b): decode tokens/s of the separate path (baseline), the tuned table (tuned)
  and the separate path under torch.compile (compiled), batch 1-48 (with 2, 12, 24, 48 between the buckets),
  prompts of 128 and 1024 tokens, 32 output tokens, 5 repeats with the variants alternating (bench_baseline.py);
  grid-llama-7b is a default part, the other models' grids are extra parts.

Each part writes <out>/<gpu>/run-<N>/<part>.csv (benchmarks/figures.py: every sample, the median and min-max, the
commit, the table's sha256, GPU, driver, torch, triton, transformers); a grid also <part>_points.csv, the rows of
bench_baseline.py for scripts/plot_baseline.py. A part whose CSV exists is kept (--force runs it again), so the
same command after a cut-short run finishes what is left. At the end scripts/render_figures.py renders every run
under <out> into <out>/figures.md, and into the README's figures section when <out> is the default.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_baseline import COLUMNS as POINT_COLUMNS, free_gpu, run_model  # noqa: E402
from benchmarks.common import CsvWriter, copy_bandwidth_gbps, require_cuda  # noqa: E402
from benchmarks.figures import (ROOT, environment, git_commit, gpu_folder, gpu_identity, quantity,  # noqa: E402
                                write_figure)
from benchmarks.peers import hf_decode_latency, hf_throughput  # noqa: E402
from benchmarks.serving import datasheet_gbps, decode_latency, throughput, workload  # noqa: E402
from nanovllm.utils.random_checkpoint import cached_random_checkpoint  # noqa: E402
from scripts.render_figures import README, render_readme  # noqa: E402
from tuning_table import find_table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "bench_results" / "reproduce"
GRID_MODELS = ("llama-7b", "mistral-7b", "llama-13b", "qwen3-0.6b")
GRID_VARIANTS = ("baseline", "tuned", "compiled")
OURS = "nano-vllm-coconut"
HF = "hf-transformers"


@dataclass(frozen=True)
class Sizes:
    decode_model: str = "llama-7b"
    prompt_len: int = 128
    decode_tokens: int = 256
    decode_repeats: int = 5
    throughput_model: str = "qwen3-0.6b"
    num_seqs: int = 256
    max_len: int = 1024  # of a workload request's prompt and output
    throughput_repeats: int = 3
    peer_num_seqs: int = 32
    peer_repeats: int = 2
    grid_batch: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24, 32, 48)
    grid_seq: tuple[int, ...] = (128, 1024)
    grid_output_len: int = 32
    grid_repeats: int = 5


FULL = Sizes()
SMOKE = Sizes(decode_model="qwen3-0.6b", decode_tokens=16, decode_repeats=2, num_seqs=8, max_len=128,
              throughput_repeats=2, peer_num_seqs=4, peer_repeats=1, grid_batch=(1, 2), grid_seq=(128,),
              grid_output_len=8, grid_repeats=2)


def decode_part(sizes: Sizes, folder: Path) -> list[dict]:
    gpu = torch.cuda.get_device_name()
    copy = [copy_bandwidth_gbps() for _ in range(3)]  # on an idle card, before a model is loaded
    path = cached_random_checkpoint(sizes.decode_model)
    ours = decode_latency(path, sizes.decode_repeats, prompt_len=sizes.prompt_len, output_len=sizes.decode_tokens)
    gc.collect()
    torch.cuda.empty_cache()
    theirs = hf_decode_latency(path, sizes.decode_repeats, prompt_len=sizes.prompt_len,
                               output_len=sizes.decode_tokens)
    datasheet = datasheet_gbps(gpu)
    keys = {"figure": "decode", "model": sizes.decode_model, "batch_size": 1, "seq_len": sizes.prompt_len}
    rows = [quantity(copy, **keys, engine="device", metric="copy_bandwidth", unit="GB/s"),
            quantity([ours.weight_bytes], **keys, engine="device", metric="weight_bytes", unit="B")]
    if datasheet is not None:
        rows.append(quantity([datasheet], **keys, engine="device", metric="datasheet_bandwidth", unit="GB/s"))
    floors = {"measured": statistics.median(copy), "datasheet": datasheet}
    for engine, variant, steps in ((OURS, "tuned", ours.step_s), (HF, "static-cache-compiled", theirs)):
        rows.append(quantity([s * 1e3 for s in steps], **keys, engine=engine, variant=variant,
                             metric="ms_per_token", unit="ms"))
        for name, gbps in floors.items():
            if gbps is not None:
                floor = ours.weight_bytes / (gbps * 1e9)
                rows.append(quantity([100 * floor / s for s in steps], **keys, engine=engine, variant=variant,
                                     metric=f"pct_of_floor_{name}", unit="%"))
    if ours.replay_s is not None:
        rows.append(quantity([ours.replay_s * 1e3], **keys, engine=OURS, variant="tuned", metric="graph_replay_ms",
                             unit="ms"))
    return rows


def throughput_part(sizes: Sizes, folder: Path) -> list[dict]:
    from transformers import AutoConfig

    path = cached_random_checkpoint(sizes.throughput_model)
    vocab = AutoConfig.from_pretrained(path).vocab_size
    keys = {"figure": "throughput", "model": sizes.throughput_model, "metric": "output_tokens_per_s",
            "unit": "tok/s"}
    prompts, lens = workload(sizes.num_seqs, vocab, sizes.max_len)
    whole = throughput(path, prompts, lens, sizes.throughput_repeats)
    free_gpu()
    prompts, lens = workload(sizes.peer_num_seqs, vocab, sizes.max_len)
    ours = throughput(path, prompts, lens, sizes.peer_repeats)
    free_gpu()
    theirs = hf_throughput(path, prompts, lens, sizes.peer_repeats)
    return [quantity(whole, **keys, engine=OURS, variant="tuned", batch_size=sizes.num_seqs),
            quantity(ours, **keys, engine=OURS, variant="tuned", batch_size=sizes.peer_num_seqs),
            quantity(theirs, **keys, engine=HF, variant="continuous-batching", batch_size=sizes.peer_num_seqs),
            # Not paired (one engine ran after the other): every pair of a repeat of each.
            quantity([o / t for o in ours for t in theirs], **{**keys, "metric": "throughput_ratio", "unit": "x"},
                     engine=f"{OURS}/{HF}", batch_size=sizes.peer_num_seqs)]


def samples(cell: str) -> list[float]:
    return [float(v) for v in str(cell).split(";")]


def grid_rows(points: pd.DataFrame, part: str) -> list[dict]:
    """A figure's rows of bench_baseline.py's: each variant's decode tokens/s per point, and each variant's ratio
    to the baseline, repeat by repeat (the variants alternated within a repeat)."""
    rows, tokens = [], {}
    for p in points.itertuples():
        keys = {"figure": part, "engine": OURS, "model": p.model_name, "variant": p.variant,
                "batch_size": p.batch_size, "seq_len": p.seq_len}
        if p.status != "ok":
            rows.append({**keys, "metric": p.status, "n": 0})
            continue
        tokens[p.variant, p.batch_size, p.seq_len] = [p.batch_size * 1e3 / t for t in samples(p.tpot_ms_samples)]
        rows.append(quantity(samples(p.tpot_ms_samples), **keys, metric="tpot", unit="ms"))
        rows.append(quantity(tokens[p.variant, p.batch_size, p.seq_len], **keys, metric="decode_tokens_per_s",
                             unit="tok/s"))
    model = points["model_name"].iloc[0]
    for (variant, batch, seq_len), values in tokens.items():
        base = tokens.get(("baseline", batch, seq_len))
        if variant != "baseline" and base is not None:
            rows.append(quantity([v / b for v, b in zip(values, base)], figure=part, engine=OURS, model=model,
                                 variant=variant, batch_size=batch, seq_len=seq_len, metric="ratio_to_baseline",
                                 unit="x"))
    return rows


def grid_part(model: str) -> Callable[[Sizes, Path], list[dict]]:
    def run(sizes: Sizes, folder: Path) -> list[dict]:
        part = f"grid-{model}"
        raw = folder / f"{part}_points.csv"
        args = argparse.Namespace(output_len=sizes.grid_output_len, tuning_table=None, repeats=sizes.grid_repeats,
                                  profile=None)
        points = [(b, s) for b in sizes.grid_batch for s in sizes.grid_seq]
        try:
            run_model(model, list(GRID_VARIANTS), points, args, CsvWriter(str(raw), POINT_COLUMNS))
            failed = []
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001: the runtime does not support torch.compile; its failure is a result
            reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
            print(f"{part}: the grid with the compiled variant failed ({reason}); again without it", flush=True)
            free_gpu()
            run_model(model, [v for v in GRID_VARIANTS if v != "compiled"], points, args,
                      CsvWriter(str(raw), POINT_COLUMNS))
            failed = [{"figure": part, "engine": OURS, "model": model, "variant": "compiled",
                       "metric": f"failed: {reason}", "n": 0}]
        length = quantity([sizes.grid_output_len], figure=part, engine=OURS, model=model, metric="output_tokens",
                          unit="tokens")
        return grid_rows(pd.read_csv(raw), part) + [length] + failed
    return run


PARTS: dict[str, Callable[[Sizes, Path], list[dict]]] = {
    "decode": decode_part, "throughput": throughput_part, **{f"grid-{m}": grid_part(m) for m in GRID_MODELS}}
DEFAULT_PARTS = ("decode", "throughput", "grid-llama-7b")
SMOKE_PARTS = ("decode", "throughput", "grid-qwen3-0.6b")


def run_parts(parts: list[str], folder: Path, env: dict, sizes: Sizes, force: bool) -> list[Path]:
    """Each part not yet in `folder` (or every one with `force`), one CSV each; returns the CSVs written."""
    written = []
    for part in parts:
        path = folder / f"{part}.csv"
        if path.exists() and not force:
            print(f"{part}: kept {path} (--force runs it again)", flush=True)
            continue
        print(f"{part}: running", flush=True)
        write_figure(path, PARTS[part](sizes, folder), env)
        free_gpu()
        written.append(path)
        print(f"{part}: wrote {path}", flush=True)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=sorted(PARTS),
                        help=f"default {' '.join(DEFAULT_PARTS)} (with --smoke {' '.join(SMOKE_PARTS)})")
    parser.add_argument("--run", type=int, default=1, help="the run's number: its CSVs go to run-<N>")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    parser.add_argument("--commit", help="the commit of this tree, where it is not a git checkout")
    parser.add_argument("--force", action="store_true", help="run parts again whose CSV exists")
    parser.add_argument("--smoke", action="store_true", help="every part at a tiny size (a check, not figures)")
    args = parser.parse_args()
    if args.run < 1:
        parser.error(f"--run {args.run}: expected a number >= 1")
    commit = args.commit or git_commit()
    if commit is None:
        parser.error("--commit: this tree is not a git checkout; give the commit it holds")
    require_cuda("reproduce.py")
    sizes = SMOKE if args.smoke else FULL
    parts = args.part or list(SMOKE_PARTS if args.smoke else DEFAULT_PARTS)
    gpu, driver = gpu_identity()
    folder = args.out.resolve() / gpu_folder(gpu) / f"run-{args.run}"
    env = environment(f"run-{args.run}", commit, gpu, driver, find_table(None, torch.device("cuda")))
    run_parts(parts, folder, env, sizes, args.force)
    out = args.out.resolve()
    text = render_readme(out, README if out == RESULTS else None)
    (args.out / "figures.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
