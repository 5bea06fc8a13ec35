"""The tuning pipeline on the DEVICE: the real kernel through Triton's interpreter for correctness,
and FakeTimer (a test double with a deterministic latency per config) instead of the GPU clock."""
import dataclasses
import math
import os
import signal

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState
from sqlalchemy import select
from sqlalchemy.orm import Session

from autotune.compile_pool import CompilePool, precompile
from autotune.heartbeat import tuning_storage
from autotune.objective import Evaluator
from autotune.export import build_table
from tests.doubles import FakeTimer, fake_gpu
from autotune.timer import Timing
from autotune import tuner as tuner_module
from autotune.objective import Result
from autotune.enqueue import warm_configs
from autotune.tuner import Tuner, TuneSettings, study_name
from db.models import Measurement, Run
from db.queries import best_results, search_history
from db.storage import Recorder, open_engine
from kernels.epilogue import GATED, PLAIN, rotary
from kernels.config import Config, device_smem_limit
from search_spaces import Problem, get_space
from search_spaces.rms_norm_linear import RmsNormLinearSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
# The real kernel runs compiled on a GPU when there is one, else in the interpreter.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SPACE = get_space("rms_norm_linear")
TINY = Problem(4, 64, 96, "float16")
ROTARY = Problem(4, 64, 3 * 64, "float16", epilogue=rotary(64, 1))  # q, k, v: a head each
GATED = Problem(4, 64, 96, "float16", epilogue=GATED)


class WrongResultSpace(RmsNormLinearSpace):
    """The real kernel, except that configs with BLOCK_N=64 (FakeTimer's favourite) return garbage."""

    def launcher(self, config):
        run = super().launcher(config)
        if config is not None and config.BLOCK_N == 64:
            return lambda inputs: run(inputs) + 1.0
        return run


class OutOfResourcesSpace(RmsNormLinearSpace):
    """Configs with 4 warps (most warm starts) fail the way an over-sized kernel fails to launch."""

    def launcher(self, config):
        if config is not None and config.num_warps == 4:
            def fail(inputs):
                raise RuntimeError("out of resource: shared memory, Required: 300000, Hardware limit: 232448")
            return fail
        return super().launcher(config)


class NothingRunsSpace(RmsNormLinearSpace):
    """Every config fails at launch, as under a broken Triton; the baseline runs."""

    def launcher(self, config):
        if config is None:
            return super().launcher(config)

        def fail(inputs):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return fail


class CtrlCMidCompileSpace(RmsNormLinearSpace):
    """A terminal's Ctrl-C arrives while this process compiles a candidate itself, and kills the compiler (ptxas)."""

    def launcher(self, config):
        if config is None:
            return super().launcher(config)

        def killed(inputs):
            os.kill(os.getpid(), signal.SIGINT)
            raise RuntimeError("PTXASError: `ptxas` failed with error code -2")
        return killed


class InterruptingTimer(FakeTimer):
    """Acts like Ctrl-C on the n-th measurement."""

    def __init__(self, after: int):
        self.left = after

    def measure(self, workload, repeats):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return super().measure(workload, repeats)


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    return url, open_engine(url)


def make_tuner(db, space=SPACE, timer=None, **settings) -> Tuner:
    url, engine = db
    return Tuner(space, tuning_storage(url), Recorder(engine), fake_gpu(), DEVICE, timer or FakeTimer(),
                 CompilePool(0, DEVICE), TuneSettings(**settings))


def fake_optimum(problem: Problem) -> float:
    timer = FakeTimer()
    ev = Evaluator(SPACE, problem, DEVICE, timer, l2_bytes=1)
    return min(timer.measure(ev.workload(c), 1).median_us for c in SPACE.feasible(problem, device_smem_limit(DEVICE)))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("config", [Config(16, 32, 32, 2, 2, 1, 1, 0), Config(16, 64, 32, 4, 3, 1, 2, 1),
                                    Config(32, 32, 64, 4, 3, 8, 1, 1)])
def test_real_kernel_configs_pass_the_check_through_the_interpreter(dtype, config):
    ev = Evaluator(SPACE, Problem(20, 64, 80, dtype), DEVICE, FakeTimer(), l2_bytes=1 << 16)
    ev.time_baseline(3)
    result = ev.evaluate(config, repeats=3)
    assert result.correct and result.error is None
    assert result.speedup == pytest.approx(ev.baseline.median_us / result.timing.median_us)
    assert result.tflops > 0 and result.gbps > 0


def test_inputs_are_random_and_rotate_past_l2():
    ev = Evaluator(SPACE, TINY, DEVICE, FakeTimer(), l2_bytes=1 << 16)
    footprint = SPACE.footprint_bytes(TINY)
    assert ev.n_buffers * footprint >= 3 * (1 << 16) and ev.n_buffers > 1
    x0, x1 = ev.inputs[0][0], ev.inputs[1][0]
    assert not torch.equal(x0, x1) and bool((x0 != 0).all())


def test_wrong_results_and_launch_failures_become_reasons():
    wrong = Evaluator(WrongResultSpace(), TINY, DEVICE, FakeTimer(), l2_bytes=1).evaluate(Config(16, 64, 32), 3)
    assert not wrong.correct and wrong.error.startswith("wrong result") and wrong.timing is None
    oor = Evaluator(OutOfResourcesSpace(), TINY, DEVICE, FakeTimer(), l2_bytes=1).evaluate(
        Config(16, 256, 32, num_warps=4), 3)
    assert not oor.correct and "out of resource" in oor.error


@pytest.mark.parametrize("problem", [ROTARY, GATED], ids=["rotary", "gated"])
def test_the_paired_forms_run_fused_against_their_separate_path(problem):
    ev = Evaluator(SPACE, problem, DEVICE, FakeTimer(), l2_bytes=1)
    q_or_act = ev.expected
    assert q_or_act.shape == ((4, 1, 64) if problem.epilogue.kind == "rotary" else (4, 48))
    # Every cache element is written by the separate path (one slot per token), none left as it was allocated.
    assert all(bool(torch.isfinite(t).all()) for t in ev.expected_written) and len(ev.expected_written) == 2 * (
        problem.epilogue.kind == "rotary")
    result = ev.evaluate(Config(16, 64, 32, 2, 2, 1), 3)
    assert result.correct, result.error


@pytest.mark.parametrize("problem", [ROTARY, GATED], ids=["rotary", "gated"])
def test_a_config_without_the_form_runs_plain_then_the_separate_kernel(problem, monkeypatch):
    import search_spaces.epilogues as epilogues

    calls, fused = [], epilogues.fused_rms_norm_linear
    monkeypatch.setattr(epilogues, "fused_rms_norm_linear", lambda *a, **kw: calls.append(
        kw.get("epilogue", PLAIN).paired) or fused(*a, **kw))
    ev = Evaluator(SPACE, problem, DEVICE, FakeTimer(), l2_bytes=1)
    assert ev.evaluate(Config(16, 64, 32, 2, 2, 1), 3).correct and calls[-1] is True  # the epilogue in the kernel
    result = ev.evaluate(Config(16, 32, 32, 2, 2, 1, SPLIT_K=2), 3)  # no form: split-K and 16-column halves
    assert result.correct, result.error
    assert calls[-1] is False  # the plain kernel; the check passed, so the separate kernel did the rest


@pytest.mark.parametrize("problem", [TINY, ROTARY, GATED], ids=["plain", "rotary", "gated"])
def test_candidates_are_checked_against_the_runtimes_separate_path(problem, monkeypatch):
    from kernels import ops

    # Its Triton kernels (the fused add + RMSNorm, SiLU-and-mul, rotary), as on CUDA; interpreted on the CPU.
    monkeypatch.setattr(ops, "use_triton", lambda t: True)
    ev = Evaluator(SPACE, problem, DEVICE, FakeTimer(), l2_bytes=1)
    for config in (Config(16, 64, 32, 2, 2, 1), Config(16, 32, 32, 2, 2, 1, SPLIT_K=2)):  # with the form, without
        result = ev.evaluate(config, 3)
        assert result.correct, result.error


@pytest.mark.parametrize("problem", [ROTARY, GATED], ids=["rotary", "gated"])
def test_the_paired_forms_precompile_on_their_small_problem(problem, monkeypatch):
    import autotune.compile_pool as compile_pool

    monkeypatch.setattr(compile_pool, "_device", DEVICE)  # as a compile worker for this device has it
    assert precompile(SPACE.name, problem, Config(16, 64, 32, 2, 2, 1).to_dict()) is None


class ForgetfulRotarySpace(RmsNormLinearSpace):
    """Configs with BLOCK_K=64 compute q right but write nothing into the KV cache."""

    def launcher(self, config):
        run, separate = super().launcher(config), super().launcher(None)
        if config is not None and config.BLOCK_K == 64:
            def forgets(inputs):
                rotary = inputs[-1]  # x, w, r, the epilogue and its KV cache
                k, v = rotary.k_cache.clone(), rotary.v_cache.clone()
                q = separate(inputs)
                rotary.k_cache.copy_(k), rotary.v_cache.copy_(v)
                return q
            return forgets
        return run


def test_a_config_that_skips_the_cache_write_is_wrong():
    ev = Evaluator(ForgetfulRotarySpace(), ROTARY, DEVICE, FakeTimer(), l2_bytes=1)
    assert ev.evaluate(Config(16, 64, 32, 2, 2, 1), 3).correct
    result = ev.evaluate(Config(16, 64, 64, 2, 2, 1), 3)
    assert not result.correct and result.error.startswith("wrong written tensor")


def test_timing_keeps_median_and_spread():
    t = Timing.from_samples([1.0, 2.0, 3.0, 4.0, 100.0])
    assert t.median_us == 3.0 and t.spread_us == 2.0 and len(t.samples_us) == 5


def test_tpe_study_stores_every_trial_and_retimes_the_top(db):
    tuner = make_tuner(db, trials=10, patience=0, retime_within=math.inf)
    outcome = tuner.tune(TINY)
    study = optuna.load_study(study_name=outcome.study_name, storage=db[0])
    counted = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    assert len(counted) == 10 and not [t for t in study.trials if t.state == TrialState.RUNNING]
    with Session(db[1]) as s:
        search = s.scalars(select(Measurement).where(Measurement.phase == "search")).all()
        retime = s.scalars(select(Measurement).where(Measurement.phase == "retime")).all()
        run = s.scalars(select(Run)).one()
    assert sorted(m.trial_number for m in search) == sorted(t.number for t in counted)
    assert len(retime) == 3 and run.status == "finished" and run.baseline_us > 0
    assert run.baseline_spread_us is not None  # the baseline's spread, next to its median
    assert run.best_measurement_id == min(retime, key=lambda m: m.median_us).id
    # The first trial is the first heuristic, moved onto this tiny problem's axes (e.g. BLOCK_K <= K = 64).
    first = warm_configs(SPACE, TINY, SPACE.axes(TINY), SPACE.heuristics(TINY, DEVICE), device_smem_limit(DEVICE))[0]
    assert Config.from_dict(study.trials[0].params) == first
    assert outcome.best.config == Config.from_dict(min(retime, key=lambda m: m.median_us).config)
    history = search_history(db[1], outcome.study_name)
    assert history["best_so_far_us"].is_monotonic_decreasing


def test_grid_is_exhaustive_and_finds_the_optimum(db):
    problem = Problem(1, 32, 32, "float16")
    n_feasible = len(SPACE.feasible(problem, device_smem_limit(DEVICE)))
    outcome = make_tuner(db, sampler="grid", trials=10_000, prefetch=4).tune(problem)
    study = optuna.load_study(study_name=outcome.study_name, storage=db[0])
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == n_feasible
    assert len({tuple(sorted(t.params.items())) for t in complete}) == n_feasible
    assert outcome.best.timing.median_us == pytest.approx(fake_optimum(problem))


def test_random_sampler_and_timeout(db):
    outcome = make_tuner(db, sampler="random", trials=1000, timeout_s=1.5).tune(TINY)
    study = optuna.load_study(study_name=outcome.study_name, storage=db[0])
    assert 0 < len(study.get_trials(states=(TrialState.COMPLETE,))) < 1000


def test_wrong_configs_are_failed_and_never_exported(db):
    outcome = make_tuner(db, space=WrongResultSpace(), trials=12).tune(TINY)
    with Session(db[1]) as s:
        failed = s.scalars(select(Measurement).where(Measurement.correct.is_(False))).all()
    assert failed and all(m.config["BLOCK_N"] == 64 and m.error.startswith("wrong result") for m in failed)
    assert outcome.best.config.BLOCK_N != 64
    best = best_results(db[1])
    assert len(best) == 1 and best.loc[0, "config"]["BLOCK_N"] != 64


def test_out_of_resources_is_a_failed_trial_and_the_search_goes_on(db):
    outcome = make_tuner(db, space=OutOfResourcesSpace(), trials=12, patience=0).tune(TINY)
    study = optuna.load_study(study_name=outcome.study_name, storage=db[0])
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert failed and all("out of resource" in t.user_attrs["error"] for t in failed)
    assert outcome.best is not None and outcome.best.config.num_warps != 4


def test_a_study_whose_every_trial_failed_is_skipped_by_a_rerun_of_as_many_trials(db):
    first = make_tuner(db, space=NothingRunsSpace(), trials=3, patience=0).tune(TINY)
    assert first.best is None and "illegal memory access" in first.error and not first.skipped
    again = make_tuner(db, space=NothingRunsSpace(), trials=3, patience=0).tune(TINY)
    assert again.skipped and again.best is None and "illegal memory access" in again.error
    with Session(db[1]) as s:
        assert len(s.scalars(select(Run)).all()) == 1  # no second, empty run
    more = make_tuner(db, space=NothingRunsSpace(), trials=5, patience=0).tune(TINY)
    assert not more.skipped
    study = optuna.load_study(study_name=first.study_name, storage=db[0])
    assert len(study.get_trials(states=(TrialState.FAIL,))) == 5


def test_rerun_resumes_the_study_and_a_finished_study_is_skipped(db):
    first = make_tuner(db, trials=5).tune(TINY)
    second = make_tuner(db, trials=9).tune(TINY)
    study = optuna.load_study(study_name=first.study_name, storage=db[0])
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL))) == 9
    assert second.best.timing.median_us <= first.best.timing.median_us
    third = make_tuner(db, trials=9).tune(TINY)
    assert third.skipped and third.best.config == second.best.config
    with Session(db[1]) as s:
        assert [r.status for r in s.scalars(select(Run).order_by(Run.id))] == ["finished", "finished"]


def test_trials_left_running_by_a_killed_process_do_not_eat_the_budget(db):
    first = make_tuner(db, trials=5).tune(TINY)
    study = optuna.load_study(study_name=first.study_name, storage=db[0])
    for _ in range(3):  # what a kill -9 leaves behind: asked ahead, never told
        study.ask()
    make_tuner(db, trials=9).tune(TINY)
    trials = optuna.load_study(study_name=first.study_name, storage=db[0]).get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials) == 9
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert sum(t.user_attrs.get("pruned") == "left running by a killed process" for t in trials) == 3


def test_table_keeps_every_bucket_across_software_versions():
    row = dict(kernel="rms_norm_linear", dtype="bfloat16", K=64, N=96, gpu="h100", gpu_name="NVIDIA H100",
               config={"BLOCK_M": 16}, median_us=10.0, spread_us=0.1, baseline_us=12.0, speedup=1.2,
               study_name="rms_norm_linear|h100|...", form="")
    best = pd.DataFrame([
        dict(row, M=1, gpu_id=1, torch="2.10", triton="3.5.0", finished_at=pd.Timestamp("2026-01-01")),
        dict(row, M=16, gpu_id=2, torch="2.11", triton="3.6.0", finished_at=pd.Timestamp("2026-02-01")),
        dict(row, M=16, gpu_id=1, torch="2.10", triton="3.5.0", finished_at=pd.Timestamp("2026-01-01"),
             median_us=99.0),
    ])
    with pytest.warns(UserWarning, match="mixes results tuned under several"):
        table = build_table(best)
    buckets = table["kernels"]["rms_norm_linear"][0]["buckets"]
    assert [(b["M"], b["latency_us"]) for b in buckets] == [(1, 10.0), (16, 10.0)]
    assert (table["torch"], table["triton"]) == ("2.11", "3.6.0")


def test_ctrl_c_keeps_finished_trials_and_a_rerun_completes(db):
    # Measurement 1 is the baseline; Ctrl-C arrives while timing the fifth candidate.
    with pytest.raises(KeyboardInterrupt):
        make_tuner(db, timer=InterruptingTimer(after=5), trials=10).tune(TINY)
    name = study_name(SPACE.name, "h100", TINY)
    study = optuna.load_study(study_name=name, storage=db[0])
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert not study.get_trials(states=(TrialState.RUNNING,))
    with Session(db[1]) as s:
        assert s.scalars(select(Run)).one().status == "interrupted"
        assert len(s.scalars(select(Measurement)).all()) == 4
    outcome = make_tuner(db, trials=10).tune(TINY)
    study = optuna.load_study(study_name=name, storage=db[0])
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL))
    assert len(done) == 10 and outcome.best is not None


def test_a_candidate_that_fails_as_ctrl_c_arrives_is_not_failed(db):
    with pytest.raises(KeyboardInterrupt):
        make_tuner(db, space=CtrlCMidCompileSpace(), trials=10).tune(TINY)
    study = optuna.load_study(study_name=study_name(SPACE.name, "h100", TINY), storage=db[0])
    # Not the config's failure: pruned, so a rerun tries it again; nothing measured.
    assert not study.get_trials(states=(TrialState.FAIL, TrialState.COMPLETE, TrialState.RUNNING))
    assert study.get_trials(states=(TrialState.PRUNED,))[0].user_attrs["pruned"] == "interrupted before timing"
    with Session(db[1]) as s:
        assert s.scalars(select(Run)).one().status == "interrupted" and not s.scalars(select(Measurement)).all()


def test_infeasible_and_duplicate_samples_are_pruned_without_counting(db):
    make_tuner(db, sampler="random", trials=8).tune(Problem(1, 64, 64, "float16"))
    study = optuna.load_study(study_name=study_name(SPACE.name, "h100", Problem(1, 64, 64, "float16")),
                              storage=db[0])
    counted = study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL))
    assert len(counted) == 8
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 8
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        assert t.user_attrs["pruned"]


def test_warm_start_configs_are_tried_first(db):
    leader = Config(16, 32, 64, 2, 5, 1, 1, 1)
    outcome = make_tuner(db, trials=3).tune(TINY, warm_start=[leader])
    study = optuna.load_study(study_name=outcome.study_name, storage=db[0])
    assert Config.from_dict(study.trials[0].params) == leader


def test_a_rotary_site_has_a_study_of_its_own_and_every_config_runs(db):
    leader = Config(16, 32, 64, 2, 5, 1, 1)  # 16-column halves: no rotary form
    outcome = make_tuner(db, trials=3).tune(ROTARY, warm_start=[leader])
    plain = dataclasses.replace(ROTARY, epilogue=PLAIN)
    assert outcome.study_name == study_name(SPACE.name, "h100", plain) + "|rotary=64/1"
    trials = optuna.load_study(study_name=outcome.study_name, storage=db[0]).trials
    assert Config.from_dict(trials[0].params) == leader
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 3  # every config runs, none fails
    assert all(t.user_attrs["pruned"].startswith("duplicate") for t in trials if t.state == TrialState.PRUNED)


def test_configs_that_run_the_same_rotary_kernel_are_one_trial(db):
    # head_dim 64: BLOCK_N 64, 128 and 256 all run 32-column halves.
    first, same = Config(16, 64, 64, 2, 2, 1), Config(16, 128, 64, 2, 2, 1)
    outcome = make_tuner(db, trials=2).tune(ROTARY, warm_start=[first, same])
    trials = optuna.load_study(study_name=outcome.study_name, storage=db[0]).trials
    assert trials[1].user_attrs["pruned"] == "duplicate of trial 0"
    assert Config.from_dict(trials[1].params) == same


def test_a_leader_too_short_for_m_is_tried_grouped_and_twice_as_tall_next(db):
    leader = Config(16, 32, 64, 2, 5, 1, 1, 1)
    outcome = make_tuner(db, trials=4).tune(dataclasses.replace(TINY, M=32), warm_start=[leader])
    study = optuna.load_study(study_name=outcome.study_name, storage=db[0])
    tried = [Config.from_dict(t.params) for t in study.trials[:3]]
    assert tried == [leader, dataclasses.replace(leader, GROUP_M=8), dataclasses.replace(leader, BLOCK_M=32)]


def test_compile_pool_precompiles_in_worker_processes():
    with CompilePool(2, DEVICE) as pool:
        ok = pool.submit(SPACE.name, TINY, Config(16, 32, 32, 2, 2, 1, 1))
        bad = pool.submit(SPACE.name, TINY, Config(16, 32, 64, 2, 2, 1, SPLIT_K=4))
        assert ok.result(timeout=120) is None
        assert "SPLIT_K" in bad.result(timeout=120)
    assert CompilePool(0, DEVICE).submit(SPACE.name, TINY, Config()).result() is None


def test_a_new_kernel_plugs_in_its_own_space(db):
    class TinyMatmulSpace(RmsNormLinearSpace):
        """Another kernel: only BLOCK_N is tuned, and the 'kernel' is torch itself."""
        name = "tiny_matmul"

        def axes(self, problem):
            return {"BLOCK_N": [32, 64]}

        def violation(self, config, problem, smem_limit):
            return None

        def heuristics(self, problem, device):
            return []

        def launcher(self, config):
            return lambda inputs: torch.nn.functional.rms_norm(inputs[0], (inputs[0].shape[-1],)) @ inputs[1].T

        def to_config(self, params):
            return dataclasses.replace(Config(), **params)

    outcome = make_tuner(db, space=TinyMatmulSpace(), sampler="grid", trials=10).tune(Problem(4, 64, 32, "float32"))
    assert outcome.study_name.startswith("tiny_matmul|") and outcome.best is not None


def test_partition_gives_each_study_one_worker_and_keeps_m_buckets_together():
    from autotune.workers import partition
    problems = [Problem(m, 64, n) for n in (96, 128) for m in (32, 1, 4)]
    parts = [[p for _, p in part] for part in partition([(SPACE.name, p) for p in problems], 2)]
    flat = [p for part in parts for p in part]
    assert len(flat) == len(set(flat)) == len(problems) and set(flat) == set(problems)
    assert [[(p.N, p.M) for p in part] for part in parts] == [[(96, 1), (96, 4), (96, 32)],
                                                               [(128, 1), (128, 4), (128, 32)]]
    assert [len(part) for part in partition([(SPACE.name, p) for p in problems], 4)] == [2, 2, 1, 1]


def test_an_interrupted_grid_resumes_without_losing_points(db):
    problem = Problem(1, 32, 32, "float16")
    with pytest.raises(KeyboardInterrupt):
        make_tuner(db, timer=InterruptingTimer(after=6), sampler="grid", trials=10_000, prefetch=4).tune(problem)
    outcome = make_tuner(db, sampler="grid", trials=10_000, prefetch=4).tune(problem)
    study = optuna.load_study(study_name=outcome.study_name, storage=db[0])
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len({tuple(sorted(t.params.items())) for t in complete}) == len(complete) == len(
        SPACE.feasible(problem, device_smem_limit(DEVICE)))
    assert outcome.best.timing.median_us == pytest.approx(fake_optimum(problem))


def test_settling_counts_only_gains_beyond_the_best_spread():
    def result(median, spread=1.0):
        return Result(Config(), True, timing=Timing(median, spread, (median,)))
    settling = tuner_module.Settling(patience=2)
    settling.add(result(100.0))
    settling.add(result(99.5))  # inside the best's spread: noise, not a gain
    assert settling.since_gain == 1 and settling.trials_left == 1 and not settling.settled
    settling.add(result(98.0))  # beyond it
    assert settling.best.timing.median_us == 98.0 and settling.since_gain == 0
    settling.add(Result(Config(), False, "wrong result"))
    settling.add(result(120.0))
    assert settling.settled
    assert not tuner_module.Settling(patience=0).settled and tuner_module.Settling(0).trials_left == math.inf


def test_a_study_ends_once_settled_leaves_nothing_waiting_and_a_rerun_keeps_it(db):
    outcome = make_tuner(db, trials=40, patience=3).tune(TINY)
    study = optuna.load_study(study_name=outcome.study_name, storage=db[0])
    counted = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    assert 3 <= len(counted) < 40 and study.user_attrs[tuner_module.SETTLED_ATTR]
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # The last `patience` timed trials gained nothing beyond the best's spread.
    best = min(t.value for t in counted if t.state == TrialState.COMPLETE)
    assert all(t.state == TrialState.FAIL or t.value >= best for t in counted[-3:])
    assert make_tuner(db, trials=40, patience=3).tune(TINY).skipped
    # Without patience the budget is spent after all.
    make_tuner(db, trials=40, patience=0).tune(TINY)
    study = optuna.load_study(study_name=outcome.study_name, storage=db[0])
    assert len([t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]) == 40


def test_only_configs_near_the_best_are_retimed(db):
    class SteepTimer(FakeTimer):  # the first config timed is far ahead of every other
        first = None

        def measure(self, workload, repeats):
            t = super().measure(workload, repeats)
            if workload.config is not None and SteepTimer.first is None:
                SteepTimer.first = workload.config
            if workload.config in (None, SteepTimer.first):
                return t
            return Timing(t.median_us * 3, t.spread_us, t.samples_us)
    outcome = make_tuner(db, timer=SteepTimer(), trials=8, patience=0).tune(TINY)
    with Session(db[1]) as s:
        retime = s.scalars(select(Measurement).where(Measurement.phase == "retime")).all()
    assert [Config.from_dict(m.config) for m in retime] == [outcome.best.config] == [SteepTimer.first]


def test_the_next_studys_warm_starts_compile_behind_this_studys_first_trials(db):
    class RecordingPool(CompilePool):
        def __init__(self):
            super().__init__(0, DEVICE)
            self.submitted = []

        def submit(self, kernel, problem, config):
            self.submitted.append((problem, config))
            return super().submit(kernel, problem, config)
    url, engine = db
    pool = RecordingPool()
    tuner = Tuner(SPACE, tuning_storage(url), Recorder(engine), fake_gpu(), DEVICE, FakeTimer(), pool,
                  TuneSettings(trials=6, patience=0, prefetch=2))
    then = dataclasses.replace(TINY, M=16)
    tuner.tune(TINY, then=then)
    problems = [p for p, _ in pool.submitted]
    first_then = problems.index(then)
    assert problems[:first_then] == [TINY] * 2  # after the first asks (prefetch 2), before the rest of the study
    want = warm_configs(SPACE, then, SPACE.axes(then), SPACE.heuristics(then, DEVICE), device_smem_limit(DEVICE))
    # As many as the study will probably time (no patience here: the prefetch).
    assert [c for p, c in pool.submitted if p == then] == want[:2] and TINY in problems[first_then:]


def test_a_rerun_with_more_patience_or_the_grid_searches_a_settled_study_on(db):
    assert not make_tuner(db, trials=40, patience=3).tune(TINY).skipped
    assert make_tuner(db, trials=40, patience=2).tune(TINY).skipped  # no more patience: as it was
    assert not make_tuner(db, trials=40, patience=6).tune(TINY).skipped


def test_failures_before_any_correct_result_do_not_settle_a_study(db):
    class FirstThreeFailSpace(RmsNormLinearSpace):
        failed = []

        def launcher(self, config):
            if config is not None and (len(self.failed) < 3 or config in self.failed):
                self.failed.append(config)

                def fail(inputs):
                    raise RuntimeError("out of resource: shared memory")
                return fail
            return super().launcher(config)
    outcome = make_tuner(db, space=FirstThreeFailSpace(), trials=12, patience=2).tune(TINY)
    study = optuna.load_study(study_name=outcome.study_name, storage=db[0])
    states = [t.state for t in study.trials if t.state != TrialState.PRUNED]
    assert states[:3] == [TrialState.FAIL] * 3 and TrialState.COMPLETE in states and outcome.best is not None
