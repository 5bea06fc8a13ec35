"""bench_peers_search.py on the CPU: its arguments, its CSV, the no-GPU line, and the peers that run through Triton's
interpreter (our kernel under @triton.autotune; the Helion kernel where helion is installed)."""
import importlib.util
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from benchmarks import bench_peers_search as bench
from search_spaces import Problem


def _exit_line(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    msg = str(e.value.code)
    assert "\n" not in msg and msg.startswith("bench_peers_search.py: ")
    return msg


@pytest.mark.parametrize("argv, names", [
    (["--peers", "ours"], "--peers ours"), (["--peers", ","], "--peers (empty)"), (["--sites", "o_proj"], "--sites o_proj"),
    (["--m", "1,x"], "--m 1,x"), (["--m", "0"], "--m 0"), (["--budget-s", "0"], "--budget-s 0"),
    (["--triton-configs", "0"], "--triton-configs 0"), (["--repeats", "1"], "--repeats 1"),
    (["--table", "no/such.json"], "--table no/such.json"),
])
def test_a_bad_argument_is_one_line_naming_it(argv, names):
    assert names in _exit_line(argv)


def test_defaults_cover_every_peer_both_sites_and_four_m(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    args = bench.parse_args([])
    assert args.peers == list(bench.PEERS) and args.sites == ["qkv", "gate_up"] and args.m == [1, 16, 256, 4096]
    assert args.out == tmp_path
    monkeypatch.delenv("OUT")
    assert bench.parse_args(["--out", "x"]).out.name == "x"
    assert bench.parse_args([]).out == bench.ROOT / "benchmarks" / "bench_results"


def test_without_cuda_one_line_and_nothing_written(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["bench_peers_search.py", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        bench.main()
    assert str(e.value.code) == "bench_peers_search.py: needs a CUDA GPU (none detected); nothing was measured"
    assert not list(tmp_path.iterdir())


def test_csv_has_every_column_and_a_wrong_or_missing_peer_has_no_latency(tmp_path):
    env = dict(gpu="NVIDIA H200", driver="570.1", torch="2.11", triton="3.6.0", helion="1.4.0")
    rows = [dict(peer="baseline", site="qkv", K=4096, N=12288, M=1, latency_us=31.0, iqr_us=0.2,
                 speedup_vs_baseline=1.0, tune_s=None, budget="none", correct=True, max_abs_error=0.0, pick="x", **env),
            dict(peer="helion", site="qkv", K=4096, N=12288, M=1, latency_us=25.2, iqr_us=0.3,
                 speedup_vs_baseline=31 / 25.2, tune_s=15.4, budget="15 s", correct=True, max_abs_error=0.01,
                 pick="block_sizes=[4; 16; 128]", **env),
            dict(peer="nvc_tune", site="qkv", K=4096, N=12288, M=1, correct=False, pick="no nvc_tune bucket", **env)]
    path = bench.write_csv(rows, tmp_path / "new")
    df = pd.read_csv(path)
    assert path.name == bench.CSV_NAME and list(df.columns) == bench.COLUMNS and len(df) == 3
    missing = df[df.peer == "nvc_tune"].iloc[0]
    assert not missing.correct and math.isnan(missing.latency_us)
    text = bench.summary(rows)
    assert "helion" in text and "25.2" in text and "15.4" in text


def _reference(inputs):
    x, w, r = inputs[:3]
    h = x + r
    return F.linear(F.rms_norm(h.float(), (h.shape[-1],), eps=bench.EPS), w.float()), h


@pytest.mark.parametrize("M", [1, 16, 40])
def test_triton_autotune_configs_are_the_space_s_one_launch_configs_and_run_correctly(M):
    problem = Problem(M, 128, 64, "float16")
    configs = bench.triton_configs(problem, None, 4)
    assert len(configs) == 4 and len(set(configs)) == 4
    for c in configs:
        assert bench.SPACE.violation(c, problem, None) is None
        assert (c.SUMSQ_IN_LOOP, c.SPLIT_K, c.TMA) == (1, 1, 0)
    assert bench.triton_configs(problem, None, 4) == configs  # seeded: the same list on every run
    inputs = bench.SPACE.make_inputs(problem, torch.device("cpu"), 1)[0]
    want = _reference(inputs)
    for c in configs[:2]:  # a one-config autotuner runs it without benchmarking, as the interpreter needs
        ok, error = bench.max_error(bench.triton_autotuned([c], problem.K)(inputs), want, "float16")
        assert ok, (c, error)


def test_eager_and_the_checks_agree_with_the_reference():
    problem = Problem(3, 64, 32, "float32")
    inputs = bench.SPACE.make_inputs(problem, torch.device("cpu"), 1)[0]
    want = _reference(inputs)
    assert bench.max_error(bench.eager(inputs), want, "float32")[0]
    y, h = want
    ok, error = bench.max_error((y + 1, h), want, "float32")
    assert not ok and error == pytest.approx(1.0)


@pytest.mark.skipif(importlib.util.find_spec("helion") is not None, reason="helion is installed")
def test_helion_absent_is_skipped_with_one_line():
    kernel, why = bench.load_helion(15)
    assert kernel is None and why.startswith("skipped: ") and "\n" not in why and "helion" in why


@pytest.mark.skipif(importlib.util.find_spec("helion") is None, reason="needs helion (GPU image: .whl/)")
def test_helion_kernel_matches_the_reference_in_the_interpreter():
    import helion
    from benchmarks.helion_rms_norm_linear import rms_norm_linear
    problem = Problem(3, 64, 64, "float32")
    x, w, r = bench.SPACE.make_inputs(problem, torch.device("cpu"), 1)[0][:3]
    # A fixed config: no autotuning on the CPU. Two column tiles, so that only the first writes h.
    kernel = helion.kernel(rms_norm_linear, static_shapes=True, config=helion.Config(block_sizes=[16, 32, 32]))
    assert bench.max_error(kernel(x, r, w, bench.EPS), _reference((x, w, r)), "float32")[0]
    tuned, version = bench.load_helion(15.4)
    assert tuned.settings.autotune_budget_seconds == 15 and tuned.settings.force_autotune and version


def test_rows_of_the_peers_that_need_no_tuning_and_of_a_missing_bucket():
    from autotune.objective import Evaluator
    from tests.doubles import FakeTimer
    from tuning_table import load_table
    problem = Problem(4, 128, 64, "float16")
    ev = Evaluator(bench.SPACE, problem, torch.device("cpu"), FakeTimer(), 1 << 20)
    args = bench.parse_args(["--repeats", "3"])
    env = dict(gpu="g", driver="d", torch="t", triton="tr", helion="")
    ctx = dict(env=env, table=load_table(bench.ROOT / "tables" / "h200.json"), table_path="tables/h200.json",
               nvc_tune=None, nvc_note="failed: `cli.py tune` exited 1")
    rows = {name: bench.measure(name, "qkv", problem, ev, FakeTimer(), args, ctx, 10.0)
            for name in ("default", "baseline", "eager", "table", "nvc_tune")}
    for name in ("default", "baseline", "eager"):
        r = rows[name]
        assert r["correct"] and r["max_abs_error"] < 1e-2 and r["latency_us"] > 0 and r["iqr_us"] >= 0, r
        assert r["speedup_vs_baseline"] == pytest.approx(10.0 / r["latency_us"]) and r["gpu"] == "g"
    assert "BLOCK_M=" in rows["default"]["pick"]
    assert rows["table"] == {"peer": "table", "site": "qkv", "K": 128, "N": 64, "M": 4, **env, "correct": False,
                             "pick": "no table bucket for 64x128 (tables/h200.json)"}
    assert not rows["nvc_tune"]["correct"] and "exited 1" in rows["nvc_tune"]["pick"]


def test_a_table_s_bucket_runs_its_config_and_names_it(tmp_path):
    from autotune.objective import Evaluator
    from tests.doubles import FakeTimer
    from tests.tuning_tables import INTERPRETER_CONFIG, entry, table, write
    from tuning_table import load_table
    problem = Problem(4, 128, 64, "float16")
    ev = Evaluator(bench.SPACE, problem, torch.device("cpu"), FakeTimer(), 1 << 20)
    path = write(table([entry(128, 64, {16: INTERPRETER_CONFIG}, dtype="float16")]), tmp_path / "t.json")
    ctx = dict(env={}, table=load_table(path), table_path=path)
    row = bench.measure("table", "qkv", problem, ev, FakeTimer(), bench.parse_args(["--repeats", "3"]), ctx, 10.0)
    assert row["correct"] and row["budget"] == "shipped" and row["latency_us"] > 0
    assert row["pick"] == f"{bench.describe(INTERPRETER_CONFIG)} (bucket M=16; {path})"


def test_a_peer_that_fails_is_a_row_with_its_reason():
    from autotune.objective import Evaluator
    from tests.doubles import FakeTimer

    class Broken:  # a Helion kernel whose autotuner fails
        def bind(self, args):
            raise RuntimeError("autotuner crashed\nmore lines")

    problem = Problem(4, 128, 64, "float16")
    ev = Evaluator(bench.SPACE, problem, torch.device("cpu"), FakeTimer(), 1 << 20)
    row = bench.measure("helion", "qkv", problem, ev, FakeTimer(), bench.parse_args([]), dict(env={}, helion=Broken()),
                        10.0)
    assert not row["correct"] and row["pick"] == "failed: RuntimeError: autotuner crashed" and "latency_us" not in row
