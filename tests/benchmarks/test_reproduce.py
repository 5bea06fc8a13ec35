"""benchmarks/reproduce.py and scripts/render_figures.py on fake timings: one CSV per figure with every sample and
the run's environment, resumable parts, and the README's figures section rendered from two runs."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import benchmarks.reproduce as rp
from benchmarks.figures import COLUMNS, environment, gpu_folder, quantity, write_figure
from benchmarks.serving import DecodeLatency
from nanovllm.utils.random_checkpoint import SHAPES
from scripts import render_figures as rf

ROOT = Path(__file__).resolve().parents[2]
SIZES = rp.Sizes(decode_repeats=3, num_seqs=8, max_len=128, throughput_repeats=2, peer_num_seqs=4, peer_repeats=2,
                 grid_batch=(1, 2), grid_seq=(128, 256), grid_repeats=3)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """Every measurement of reproduce.py replaced by fixed timings, scaled by `speed[0]` (a second run's)."""
    config = tmp_path / "ckpt"
    SHAPES["tiny-qwen3"]().save_pretrained(config)
    speed, calls = [1.0], []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    monkeypatch.setattr(rp, "cached_random_checkpoint", lambda shape: str(config))
    monkeypatch.setattr(rp, "copy_bandwidth_gbps", lambda: 4000.0 * speed[0])
    monkeypatch.setattr(rp, "decode_latency", lambda path, repeats, **kw: calls.append("decode") or DecodeLatency(
        [speed[0] * s for s in (4e-3, 5e-3, 4.5e-3)][:repeats], 12_000_000_000, 3.9e-3))
    monkeypatch.setattr(rp, "hf_decode_latency", lambda path, repeats, **kw: [8e-3 * speed[0]] * repeats)
    monkeypatch.setattr(rp, "throughput", lambda path, prompts, lens, repeats: calls.append("throughput") or [
        1000.0 * len(prompts) / speed[0] + r for r in range(repeats)])
    monkeypatch.setattr(rp, "hf_throughput", lambda path, prompts, lens, repeats: [100.0 / speed[0]] * repeats)

    def run_model(model, variants, points, args, writer):
        calls.append(tuple(variants))
        if "compiled" in variants and speed[0] == 3.0:
            raise RuntimeError("BackendCompilerFailed\nmore")
        for variant in variants:
            gain = {"baseline": 1.0, "tuned": 1.1, "compiled": 0.9}[variant]
            for batch, seq_len in points:
                tpot = [10.0 / gain * speed[0] * (1 + 0.01 * r) for r in range(args.repeats)]
                writer.write({"model_name": model, "variant": variant, "batch_size": batch, "seq_len": seq_len,
                              "status": "ok", "tpot_ms_samples": ";".join(map(str, tpot))})
        writer.write({"model_name": model, "variant": "baseline", "batch_size": 64, "seq_len": 128, "status": "oom"})

    monkeypatch.setattr(rp, "run_model", run_model)
    return speed, calls


def env(run: str) -> dict:
    return environment(run, "abc123", "NVIDIA H200", "570.124.06", ROOT / "tables" / "h200.json")


def test_parts_write_one_csv_per_figure_with_every_sample_and_resume(fake_gpu, tmp_path):
    speed, calls = fake_gpu
    folder = tmp_path / "out" / gpu_folder("NVIDIA H200") / "run-1"
    parts = ["decode", "throughput", "grid-llama-7b"]
    written = rp.run_parts(parts, folder, env("run-1"), SIZES, force=False)
    assert [p.name for p in written] == ["decode.csv", "throughput.csv", "grid-llama-7b.csv"]
    assert folder.parent.name == "nvidia-h200" and (folder / "grid-llama-7b_points.csv").exists()
    decode = pd.read_csv(folder / "decode.csv")
    assert list(decode.columns) == COLUMNS
    assert set(decode["commit"]) == {"abc123"} and set(decode["driver"]) == {"570.124.06"}
    assert set(decode["table_sha256"]) == {rf_sha(ROOT / "tables" / "h200.json")}
    assert set(decode["tuning_table"]) == {"tables/h200.json"} and set(decode["torch"]) == {torch.__version__}
    ms = decode[(decode["engine"] == "nano-vllm-coconut") & (decode["metric"] == "ms_per_token")].iloc[0]
    assert (ms["n"], ms["median"], ms["min"], ms["max"], ms["samples"]) == (3, 4.5, 4.0, 5.0, "4;5;4.5")
    # The floor of 12 GB at the measured 4,000 GB/s is 3 ms, at the H200's datasheet 4,800 GB/s 2.5 ms.
    pct = decode.set_index(["engine", "metric"])["median"]
    assert pct["nano-vllm-coconut", "pct_of_floor_measured"] == pytest.approx(100 * 3 / 4.5)
    assert pct["nano-vllm-coconut", "pct_of_floor_datasheet"] == pytest.approx(100 * 2.5 / 4.5)
    assert pct["hf-transformers", "pct_of_floor_datasheet"] == pytest.approx(100 * 2.5 / 8)
    tp = pd.read_csv(folder / "throughput.csv").set_index(["engine", "batch_size"])
    assert tp.loc[("nano-vllm-coconut", 8), "samples"] == "8000;8001"
    assert tp.loc[("nano-vllm-coconut/hf-transformers", 4), "median"] == pytest.approx(40.005)  # every pair
    grid = pd.read_csv(folder / "grid-llama-7b.csv")
    ratio = grid[(grid["metric"] == "ratio_to_baseline") & (grid["variant"] == "tuned")]
    assert len(ratio) == 4 and ratio["median"].round(6).eq(1.1).all()  # repeat by repeat
    tokens = grid[(grid["metric"] == "decode_tokens_per_s") & (grid["variant"] == "baseline")]
    assert tokens[tokens["batch_size"] == 2]["max"].round(6).eq(200.0).all()
    assert (grid["metric"] == "oom").sum() == 1
    # Again: every part is kept, nothing runs; --force runs a part again.
    calls.clear()
    assert rp.run_parts(parts, folder, env("run-1"), SIZES, force=False) == [] and calls == []
    assert rp.run_parts(["decode"], folder, env("run-1"), SIZES, force=True) == [folder / "decode.csv"]
    assert calls == ["decode"]


def test_a_failed_part_leaves_the_finished_ones_and_no_partial_file(fake_gpu, tmp_path, monkeypatch):
    folder = tmp_path / "run-1"
    monkeypatch.setattr(rp, "hf_throughput", lambda *a: (_ for _ in ()).throw(RuntimeError("CB thread died")))
    with pytest.raises(RuntimeError, match="CB thread died"):
        rp.run_parts(["decode", "throughput"], folder, env("run-1"), SIZES, force=False)
    assert sorted(p.name for p in folder.iterdir()) == ["decode.csv"]


def test_a_compile_failure_is_recorded_and_the_grid_runs_without_it(fake_gpu, tmp_path):
    speed, calls = fake_gpu
    speed[0] = 3.0
    folder = tmp_path / "nvidia-h200" / "run-1"
    rp.run_parts(["grid-qwen3-0.6b"], folder, env("run-1"), SIZES, force=False)
    assert calls == [("baseline", "tuned", "compiled"), ("baseline", "tuned")]
    grid = pd.read_csv(folder / "grid-qwen3-0.6b.csv")
    assert list(grid[grid["variant"] == "compiled"]["metric"]) == ["failed: RuntimeError: BackendCompilerFailed"]
    assert set(grid[grid["metric"] == "ratio_to_baseline"]["variant"]) == {"tuned"}
    section = rf.render(tmp_path)
    assert "| batch | qwen3-0.6b tuned |" in section
    assert "qwen3-0.6b torch.compile did not run (run-1): RuntimeError: BackendCompilerFailed" in section


def test_the_readme_has_one_figures_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    rf.replace_section(readme, "rendered")
    head, _, tail = (ROOT / "README.md").read_text().partition(rf.BEGIN)
    assert readme.read_text() == f"{head}{rf.BEGIN}\nrendered\n{rf.END}{tail.partition(rf.END)[2]}"


def rf_sha(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_readme_section_is_rendered_from_two_runs(fake_gpu, tmp_path):
    speed, _ = fake_gpu
    results = tmp_path / "reproduce"
    for n, s in ((1, 1.0), (2, 1.02)):
        speed[0] = s
        rp.run_parts(["decode", "throughput", "grid-llama-7b"], results / "nvidia-h200" / f"run-{n}",
                     env(f"run-{n}"), SIZES, force=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{rf.BEGIN}\nold figures: 3.68 ms\n{rf.END}\nafter\n")
    section = rf.render_readme(results, readme)
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith(f"\n{rf.END}\nafter\n")
    assert "old figures" not in text and section in text
    assert "**NVIDIA H200**" in section and "run-1: commit abc123" in section and "run-2: commit abc123" in section
    # ours: run medians 4.5 and 4.59 ms -> 4.545, samples 4.0 ... 5.1 over 2 runs of 3.
    assert "**4.54 ms (4.00–5.10 ms; 2 runs × 3)** a token" in section or "**4.55 ms (4.00–5.10 ms; 2 runs × 3)**" \
        in section
    assert "static KV cache" in section and "8.08 ms" in section
    assert "256 requests" not in section and "8 requests" in section  # the sizes the runs used
    assert "| batch | llama-7b tuned | llama-7b torch.compile |" in section
    assert "| 1 | 1.10–1.10x | 0.90–0.90x |" in section and "| 2 | 1.10–1.10x | 0.90–0.90x |" in section
    assert "32 output tokens" in section and "prompts of 128, 256 tokens" in section
    # The command line: --print leaves the README alone; a README without the markers fails in one line.
    result = run("scripts/render_figures.py", "--results", str(results), "--print")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == section.strip()
    (tmp_path / "bare.md").write_text("no markers\n")
    result = run("scripts/render_figures.py", "--results", str(results), "--readme", str(tmp_path / "bare.md"))
    assert result.returncode == 2 and "expected one '<!-- figures:begin -->' line" in result.stderr
    result = run("scripts/render_figures.py", "--results", str(tmp_path / "empty"), "--print")
    assert result.returncode == 2 and "no figure CSVs" in result.stderr


def test_write_figure_refuses_unknown_columns_and_empty_samples(tmp_path):
    with pytest.raises(ValueError, match="no samples"):
        quantity([], metric="x")
    with pytest.raises(ValueError, match=r"unknown columns \['speed'\]"):
        write_figure(tmp_path / "f.csv", [{"speed": 1}], env("run-1"))
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_reproduce_says_it_needs_a_gpu(tmp_path):
    result = run("benchmarks/reproduce.py", "--out", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip() == "reproduce.py: needs a CUDA GPU (none detected); nothing was measured"
    assert not list(tmp_path.iterdir())
    result = run("benchmarks/reproduce.py", "--run", "0")
    assert result.returncode == 2 and "--run 0: expected a number >= 1" in result.stderr
