"""benchmarks/bench_heuristic.py without a GPU: the hold-out plan, the summary, and the GPU-only message."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.bench_heuristic import VARIANTS, plan, summary
from kernels.config import Config, default_config
from tests.tuning_tables import entry, table
from tuning_table import parse_table

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
QWEN = Config(16, 32, 128, num_warps=4, num_stages=5, GROUP_M=1)
LLAMA = Config(16, 64, 128, num_warps=2, num_stages=4, GROUP_M=1)


def test_each_preset_is_predicted_without_its_own_shapes():
    # qwen3-0.6b's QKV (1024 x 4096) and llama-7b's QKV (4096 x 12288), each tuned at M = 1 and 16.
    t = parse_table(table([entry(1024, 4096, {1: QWEN, 16: QWEN}, dtype="bfloat16"),
                           entry(4096, 12288, {1: LLAMA, 16: LLAMA, 4096: LLAMA}, dtype="bfloat16")]))
    cases = plan(t, ("llama-7b", "qwen3-0.6b"), CPU, max_m=1024)
    assert [(c.preset, c.site, c.problem.M) for c in cases] == [
        ("llama-7b", "qkv", 1), ("llama-7b", "qkv", 16), ("qwen3-0.6b", "qkv", 1), ("qwen3-0.6b", "qkv", 16)]
    llama, qwen = cases[0], cases[2]
    assert llama.configs["predicted"] == QWEN and llama.configs["tuned"] == LLAMA  # never its own bucket
    assert qwen.configs["predicted"] == LLAMA and qwen.configs["tuned"] == QWEN
    assert llama.problem.epilogue.kind == "rotary" and qwen.problem.epilogue.kind == "plain"  # the runtime's forms
    assert llama.configs["default"] == default_config(1, 12288, 4096, CPU) and llama.configs["eager"] is None
    assert {c.predicted_from for c in cases} == {"learned"}
    lone = plan(t, ("qwen3-0.6b",), CPU)  # trained on llama-7b's: M = 1 and 16 are near, nothing else is asked
    assert [c.predicted_from for c in lone] == ["learned", "learned"]
    alone = plan(parse_table(table([entry(1024, 4096, {1: QWEN}, dtype="bfloat16")])), ("qwen3-0.6b",), CPU)
    assert alone[0].predicted_from == "default" and alone[0].configs["predicted"] == alone[0].configs["default"]


def rows(preset, M, us, configs=None, error=""):
    configs = configs or {}
    return [dict(preset=preset, kernel="rms_norm_linear", site="qkv", M=M, variant=v, round=r, median_us=t,
                 config=configs.get(v, v), error=error if v == "predicted" else "")
            for v, t in zip(VARIANTS, us) for r in range(2)]


def test_the_summary_gives_the_geomean_and_the_worst_decode_ratio():
    data = rows("llama-7b", 1, (11.0, 10.0, 12.0, 10.0)) + rows("llama-7b", 4096, (40.0, 10.0, 10.0, 10.0)) + \
        rows("llama-7b", 16, (9.0, 9.0, 9.0, 12.0), {"predicted": "c", "tuned": "c"}) + \
        rows("qwen3-0.6b", 1, (1.0, 1.0, 1.0, 1.0), error="wrong result")
    out = summary(data).splitlines()
    llama = out[1].split()
    assert llama[:4] == ["llama-7b", "rms_norm_linear", "3", "0"]
    assert float(llama[4]) == pytest.approx((1.1 * 4.0 * 1.0) ** (1 / 3), abs=1e-3)  # pred / tuned
    assert float(llama[5]) == pytest.approx((1.2 * 1.0 * 1.0) ** (1 / 3), abs=1e-3)  # default / tuned
    assert llama[6] == "1"  # M = 16 predicted the tuned config
    assert "1.100 (qkv M=1)" in out[1]  # M = 4096 is past the decode sizes
    assert out[2].split()[:4] == ["qwen3-0.6b", "rms_norm_linear", "1", "1"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without a GPU")
def test_without_a_gpu_it_says_so_and_measures_nothing():
    result = subprocess.run([sys.executable, "benchmarks/bench_heuristic.py"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and result.stderr.strip().splitlines() == [
        "bench_heuristic.py: needs a CUDA GPU (none detected); nothing was measured"]
    bad = subprocess.run([sys.executable, "benchmarks/bench_heuristic.py", "--presets", "gpt-2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--presets 'gpt-2': expected presets among" in bad.stderr


def test_every_variant_is_checked_then_timed_each_round_in_a_rotated_order(tmp_path, monkeypatch, capsys):
    from argparse import Namespace

    from autotune.objective import Evaluator
    from benchmarks.bench_heuristic import run
    from tests.doubles import FakeTimer, fake_gpu

    checked = []
    monkeypatch.setattr(Evaluator, "check", lambda self, config: checked.append(config) or None)
    t = parse_table(table([entry(1024, 4096, {1: QWEN}, dtype="bfloat16"),
                           entry(4096, 12288, {1: LLAMA}, dtype="bfloat16")]))
    args = Namespace(max_m=1, rounds=3, repeats=2, compile_processes=0, out=str(tmp_path))
    out = run(t, ("qwen3-0.6b",), args, CPU, fake_gpu(), FakeTimer())
    assert checked == [LLAMA, QWEN, default_config(1, 4096, 1024, CPU)]  # the eager baseline is the reference
    assert [r["variant"] for r in out] == [*VARIANTS, *VARIANTS[1:], VARIANTS[0], *VARIANTS[2:], *VARIANTS[:2]]
    assert all(r["median_us"] > 0 and r["error"] == "" for r in out)
    written = (tmp_path / "bench_heuristic.csv").read_text().splitlines()
    assert len(written) == 1 + 12 and written[0].startswith("preset,kernel,site,K,N,M,epilogue,variant,round")
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].split()[:4] == ["qwen3-0.6b", "rms_norm_linear", "1", "0"]
    # The committed CSV gives the same table again, without a GPU.
    again = subprocess.run([sys.executable, "benchmarks/bench_heuristic.py", "--summary",
                            str(tmp_path / "bench_heuristic.csv")], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and again.stdout.strip().splitlines() == printed[-2:]
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    bad = subprocess.run([sys.executable, "benchmarks/bench_heuristic.py", "--summary", str(tmp_path / "other.csv")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "not a CSV of this script (missing columns preset" in bad.stderr
