"""The benchmark's scripts on small synthetic inputs: profile comparison, plots, and the GPU-only message."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def trace(path: Path, kernels: list[tuple[str, float]]) -> str:
    """A chrome trace as torch.profiler writes it: CPU ops, launch calls and GPU kernels (durations in us)."""
    events = [{"ph": "X", "cat": "cpu_op", "name": "aten::linear", "ts": 0, "dur": 500.0}]
    for i, (name, dur) in enumerate(kernels):
        events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": i, "dur": 3.0})
        events.append({"ph": "X", "cat": "kernel", "name": name, "ts": i, "dur": dur, "args": {"stream": 7}})
    events.append({"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pinned -> Device)", "ts": 9, "dur": 2.0})
    path.write_text(json.dumps({"traceEvents": events, "deviceProperties": []}))
    return str(path)


def test_compare_profiles_splits_time_and_launches_by_category(tmp_path):
    baseline = trace(tmp_path / "a.json", [
        ("_rms_norm_kernel", 10.0), ("nvjet_tst_128x64_64x8_2x1_v_bz_TNT", 100.0), ("_rms_norm_kernel", 10.0),
        ("sm90_xmma_gemm_bf16bf16_bf16f32", 200.0), ("_decode_split_kernel", 40.0), ("_decode_merge_kernel", 10.0),
        ("_silu_and_mul_kernel", 5.0)])
    optimized = trace(tmp_path / "b.json", [
        ("_row_stats_kernel", 4.0), ("_gemm_kernel", 90.0), ("_gemm_kernel", 180.0),
        ("_decode_split_kernel", 50.0), ("_silu_and_mul_kernel", 5.0)])
    out = tmp_path / "cmp.csv"
    result = run("scripts/compare_profiles.py", baseline, optimized, "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "GEMM" in result.stdout and "total" in result.stdout
    table = pd.read_csv(out, index_col="category")
    assert list(table.index) == ["GEMM", "norm", "attention", "other", "total"]
    assert table.loc["GEMM", ["baseline_ms", "optimized_ms", "diff_ms"]].tolist() == pytest.approx([0.3, 0.27, -0.03])
    assert table.loc["norm", ["baseline_launches", "optimized_launches", "diff_launches"]].tolist() == [2, 1, -1]
    assert table.loc["other", "baseline_launches"] == 2  # silu and the copy
    assert table.loc["total", "baseline_ms"] == pytest.approx(0.377)
    assert table.loc["total", "optimized_ms"] == pytest.approx(0.331)
    assert table.loc["attention", ["speedup", "diff_launches"]].tolist() == pytest.approx([1.0, -1])
    # Kernel by kernel, the largest change first; a kernel one side lacks has zeros there.
    kernels = pd.read_csv(tmp_path / "cmp_kernels.csv", index_col="kernel")
    assert kernels.index[0] == "_gemm_kernel"
    assert kernels.loc["_gemm_kernel", ["baseline_ms", "optimized_ms", "optimized_launches",
                                                   "optimized_us_per_launch"]].tolist() == pytest.approx(
        [0.0, 0.27, 2, 135.0])
    assert kernels.loc["_decode_split_kernel", ["baseline_us_per_launch", "diff_ms"]].tolist() == pytest.approx(
        [40.0, 0.01])
    assert kernels.loc["_silu_and_mul_kernel", "diff_ms"] == 0
    assert "The 9 kernels whose GPU time changed most" in result.stdout  # all of them: fewer than --top


def test_compare_profiles_reads_nsys_kernel_summaries(tmp_path):
    header = ["Time (%)", "Total Time (ns)", "Instances", "Avg (ns)", "Med (ns)", "Min (ns)", "Max (ns)",
              "StdDev (ns)", "Name"]
    for name, rows in (("a.csv", [[80, 8000, 4, 2000, 2000, 2000, 2000, 0, "ampere_bf16_s16816gemm"],
                                  [20, 2000, 4, 500, 500, 500, 500, 0, "_rms_norm_kernel"]]),
                       ("b.csv", [[100, 7000, 4, 1750, 1750, 1750, 1750, 0, "_gemm_kernel"]])):
        with open(tmp_path / name, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
    result = run("scripts/compare_profiles.py", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"),
                 "--output", str(tmp_path / "cmp.csv"))
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "cmp.csv", index_col="category")
    assert table.loc["total", ["baseline_ms", "optimized_ms"]].tolist() == pytest.approx([0.010, 0.007])
    assert table.loc["norm", "optimized_launches"] == 0


def test_compare_profiles_rejects_a_negative_top(tmp_path):
    result = run("scripts/compare_profiles.py", "a.json", "b.json", "--top", "-1", "--output", str(tmp_path / "c.csv"))
    assert result.returncode == 2
    assert "--top -1: expected a count >= 0" in result.stderr
    assert not (tmp_path / "c.csv").exists()


def test_compare_profiles_rejects_a_trace_without_kernels(tmp_path):
    cpu_only = tmp_path / "cpu.json"
    cpu_only.write_text(json.dumps({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "dur": 1}]}))
    result = run("scripts/compare_profiles.py", str(cpu_only), str(cpu_only))
    assert result.returncode == 2 and "no GPU kernels in the trace" in result.stderr


def test_plot_baseline_writes_both_plots_per_model(tmp_path):
    pytest.importorskip("matplotlib")
    gain = {"baseline": 1.0, "tuned": 1.1}
    rows = [dict(model_name=m, variant=v, batch_size=b, seq_len=s, latency_ms=10.0 * b, ttft_ms=1.0,
                 tpot_ms=1.0 / gain[v], throughput_tokens_per_sec=100.0 * b * gain[v], peak_memory_mb=1.0,
                 status="ok", gpu="NVIDIA H100", tpot_ms_samples=f"{1 / gain[v]};{0.9 / gain[v]}")
            for m in ("llama-7b", "qwen3-0.6b") for v in ("baseline", "tuned") for b in (1, 4) for s in (128, 256)]
    rows.append({**rows[0], "batch_size": 32, "latency_ms": None, "status": "oom"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    result = run("scripts/plot_baseline.py", str(tmp_path / "m.csv"), "--out", str(tmp_path / "plots"))
    assert result.returncode == 0, result.stderr
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["latency_vs_seq_len_llama-7b.png", "latency_vs_seq_len_qwen3-0.6b.png",
                    "ratio_vs_batch_llama-7b.png", "ratio_vs_batch_qwen3-0.6b.png",
                    "throughput_vs_batch_llama-7b.png", "throughput_vs_batch_qwen3-0.6b.png"]
    assert all((tmp_path / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    # A CSV of the baseline alone has no ratio to plot.
    pd.DataFrame([r for r in rows if r["variant"] == "baseline"]).to_csv(tmp_path / "b.csv", index=False)
    result = run("scripts/plot_baseline.py", str(tmp_path / "b.csv"), "--out", str(tmp_path / "only"))
    assert result.returncode == 0, result.stderr
    assert not any(p.name.startswith("ratio") for p in (tmp_path / "only").iterdir())


def test_plot_baseline_ratios_are_the_variants_over_the_baseline():
    import importlib

    pytest.importorskip("matplotlib")
    plot_baseline = importlib.import_module("scripts.plot_baseline")
    variant = pd.Series({"tpot_ms_samples": "8;10"})
    baseline = pd.Series({"tpot_ms_samples": "10;11"})
    assert plot_baseline.repeat_ratios(variant, baseline) == pytest.approx([1.25, 1.1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_bench_baseline_says_it_needs_a_gpu():
    result = run("benchmarks/bench_baseline.py", "--model", "llama-7b", "--batch_size", "1", "--seq_len", "128")
    assert result.returncode == 1
    assert result.stderr.strip() == "bench_baseline.py: needs a CUDA GPU (none detected); nothing was measured"


def test_bench_baseline_alternates_the_variants_within_each_point(monkeypatch, tmp_path):
    import argparse

    import benchmarks.bench_baseline as bb

    calls, memory = [], {"allocated": 0}

    def build(path, variant, points, output_len, table):
        memory["allocated"] += 100  # each engine holds 100 bytes: weights and cache
        return argparse.Namespace(variant=variant)

    for name, fn in {"memory_allocated": lambda: memory["allocated"], "mem_get_info": lambda: (1000, 2000),
                     "reset_peak_memory_stats": lambda: None, "empty_cache": lambda: None,
                     "max_memory_allocated": lambda: memory["allocated"] + 7}.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    monkeypatch.setattr(bb, "build", build)
    monkeypatch.setattr(bb, "run_once", lambda llm, b, s, o: calls.append((llm.variant, b)) or (0.02, 0.31))
    monkeypatch.setattr(bb, "gpu_name", lambda: "fake")
    monkeypatch.setattr(bb, "find_table", lambda table, device: None)
    args = argparse.Namespace(output_len=32, tuning_table=None, repeats=2, profile=None)
    engines = bb.build_together("ckpt", ["baseline", "tuned"], [(4, 64), (1, 128)], args)
    writer = bb.CsvWriter(str(tmp_path / "m.csv"), bb.COLUMNS)
    assert bb.run_interleaved(engines, "llama-7b", [(4, 64), (1, 128)], args, writer) == []
    # The smaller point first; per point one warm-up each, then the repeats alternate between the variants, the
    # order turned each repeat.
    assert calls == [(v, b) for b in (1, 4) for v in ("baseline", "tuned", "baseline", "tuned", "tuned", "baseline")]
    rows = pd.read_csv(tmp_path / "m.csv")
    assert len(rows) == 4 and set(rows["status"]) == {"ok"}
    assert rows["tpot_ms"].round(6).eq(10.0).all() and rows["ttft_ms"].round(6).eq(20.0).all()
    # A variant's peak leaves out the other engine's 100 bytes.
    assert rows["peak_memory_mb"].mul(2**20).round().eq(107).all()
    assert set(rows["tpot_ms_samples"]) == {"10;10"} and set(rows["ttft_ms_samples"]) == {"20;20"}
    # A point out of memory with both engines loaded: it and the points after it go back to the caller.
    def run_once(llm, batch, seq_len, output_len):
        if batch == 4:
            raise torch.cuda.OutOfMemoryError("fake")
        return 0.02, 0.31
    monkeypatch.setattr(bb, "run_once", run_once)
    assert bb.run_interleaved(engines, "llama-7b", [(4, 64), (1, 128), (8, 64)], args, writer) == [(4, 64), (8, 64)]
    # No room for a second engine: the caller runs the variants one after the other.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (50, 2000))
    assert bb.build_together("ckpt", ["baseline", "tuned"], [(1, 128)], args) is None


def test_bench_baseline_runs_only_the_points_too_large_for_two_engines_variant_by_variant(monkeypatch):
    import argparse

    import benchmarks.bench_baseline as bb

    tried, ran = [], []
    def build_together(path, variants, points, args):  # the pair fits up to 1,000 KV blocks
        tried.append(max(points))
        return {} if max(bb.footprint(p, args.output_len)[0] for p in points) <= 1000 else None
    monkeypatch.setattr(bb, "build_together", build_together)
    monkeypatch.setattr(bb, "run_interleaved", lambda engines, name, points, args, writer: ran.append(
        ("both", points)) or points[-1:])  # the last point ran out of memory with both engines loaded
    monkeypatch.setattr(bb, "run_variant", lambda path, name, v, points, args, writer: ran.append((v, points)))
    args = argparse.Namespace(output_len=32)
    points = [(b, s) for b in (1, 32) for s in (128, 512, 1024)]  # 32 x 1024: 2,112 blocks; 32 x 512: 1,088
    bb.run_model("ckpt", ["baseline", "tuned"], points, args, None)
    assert tried == [(32, 1024), (32, 512), (32, 128)]
    smaller = [(1, 128), (1, 512), (1, 1024), (32, 128)]
    assert ran == [("both", smaller), ("baseline", [(32, 128), (32, 512), (32, 1024)]),
                   ("tuned", [(32, 128), (32, 512), (32, 1024)])]
    # One variant: no pair to build, every point runs alone.
    tried.clear(), ran.clear()
    bb.run_model("ckpt", ["tuned"], points, args, None)
    assert tried == [] and ran == [("tuned", sorted(points, key=lambda p: bb.footprint(p, 32)))]


def test_bench_baseline_runs_several_models_into_one_csv(monkeypatch, tmp_path):
    import benchmarks.bench_baseline as bb

    ran = []
    monkeypatch.setattr(bb, "require_cuda", lambda script: None)
    monkeypatch.setattr(bb, "run_model", lambda model, variants, points, args, writer: ran.append(
        (model, variants, points, writer.path)))
    out = str(tmp_path / "grid.csv")
    monkeypatch.setattr(sys, "argv", ["bench_baseline.py", "--model", "qwen3-0.6b", "llama-7b",
                                      "--variant", "baseline", "tuned", "--batch_size", "1", "8", "--seq_len", "128",
                                      "--output", out])
    monkeypatch.setattr(bb, "speedups", lambda df: df)
    bb.main()
    # In the order given, every one into the same CSV with the same grid.
    assert ran == [(m, ["baseline", "tuned"], [(1, 128), (8, 128)], out) for m in ("qwen3-0.6b", "llama-7b")]


def test_bench_baseline_names_the_model_it_does_not_know():
    result = run("benchmarks/bench_baseline.py", "--model", "llama-7b", "gpt-9", "--batch_size", "1")
    assert result.returncode == 2
    assert "--model 'gpt-9': expected one of llama-7b, llama-13b, mistral-7b, qwen3-0.6b or a folder with a " \
           "config.json" in result.stderr


def test_bench_baseline_refuses_a_model_named_twice(tmp_path):
    ckpt = tmp_path / "runs" / "llama-7b"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    result = run("benchmarks/bench_baseline.py", "--model", "llama-7b", str(ckpt))
    assert result.returncode == 2
    assert "--model: ['llama-7b', 'llama-7b'] name a model twice" in result.stderr


def test_tuner_host_reports_the_host_work_of_a_study():
    r = run("benchmarks/tuner_host.py", "--studies", "1", "--trials", "4", "--patience", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("1 studies, --trials 4 --patience 2: ") and "s of host work a study" in r.stdout
