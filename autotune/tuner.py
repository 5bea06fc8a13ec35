"""One Optuna study per (GPU, kernel, dtype, problem dims, form): sample, compile ahead, check, time, re-time the
top few. (For the GEMM kernels the dims are M, K, N and the form the epilogue's; a plugin's problem names its own.)

Design choices (see docs for the numbers):
- A study is one M bucket of one (K, N). Pruning the axes by M keeps each study's space small,
  and the winners of the previous bucket warm-start the next (passed in as `warm_start`).
- `trials` is the study's budget of finished trials (complete, or failed by their config), so a rerun
  resumes an interrupted study where it stopped and a finished study is not tuned again. Infeasible and
  duplicate samples are pruned before anything compiles and do not count; nor do trials left running by a
  killed process (pruned on SQLite, failed by their stopped heartbeat on PostgreSQL: `heartbeat.py`).
- Trials are asked ahead (TPE's constant liar keeps pending trials apart) and handed to the
  compile pool; the GPU times them in order as their binaries become ready. Once a study's first trials are in the
  pool, the next study's heuristic warm starts follow them (`then`), so that study does not start on an idle GPU
  waiting for its first compiles.
- A study stops early once it has settled: `patience` finished trials in a row none of which beat the best by
  more than its measured noise (the interquartile range of its samples). Most of a study's best configs are its
  warm starts (docs/PERF_NOTES.md), so the budget `trials` is the most it spends, not what it usually does; the
  trials asked ahead are held to what the patience left could still use.
- The best `retime_top` configs within `retime_within` of the best are then timed again head to head,
  interleaved with the baseline over several rounds, and the winner of that is the study's result (a config
  clearly behind the best is not worth the rounds).
- A run's `--budget` reaches a study as a wall-clock deadline: its search stops at the deadline when that comes
  before its own timeout, and a study with less than MIN_STUDY_S left is not started (a rerun starts it). Like
  the timeout, the deadline stops the asking; what was asked ahead is still timed, and the leaders re-timed.
"""
from __future__ import annotations

import math
import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from autotune.compile_pool import CompilePool
from autotune.device import GpuInfo
from autotune.enqueue import (CONFIG_ATTR, duplicate_of, enqueue_grid, enqueue_warm_starts, grown_leaders, settled_trials,
                              warm_configs)
from autotune.heartbeat import Heartbeat, fail_stale_trials, failed_by_heartbeat, reclaim_orphans
from autotune.interrupt import DeferredInterrupt
from autotune.objective import Evaluator, Result, short_error
from autotune.samplers import SAMPLERS, make_sampler
from autotune.timer import Timer, Timing
from db.models import GRID, SAMPLER, WARM_START
from db.storage import Recorder, RunKey
from kernels.config import Config, device_smem_limit
from search_spaces.base import Problem, SearchSpace, TunedProblem


# A study attribute: the patience its search settled with (Settling); a rerun with no more patience leaves it as it
# is, one with more (or the exhaustive grid) searches on.
SETTLED_ATTR = "settled"
# How often a worker whose study is filled by another worker's running trials looks again.
OTHERS_POLL_S = 1.0
# Less time than this left of a run's budget does not start a study: setting it up, compiling its first candidates
# and re-timing its leaders take a few seconds on a GPU, and what is left would store a result of a trial or two.
MIN_STUDY_S = 5.0


def _others_hold_budget(study: optuna.Study, budget: int) -> bool:
    """Whether a shared (heartbeat) study is short of its budget only because of RUNNING trials, which (with nothing
    pending here) are other workers': a live worker tells them, a dead one's are failed and requeued once their
    heartbeat is stale. Without heartbeats (SQLite) a dead process's trial would never end the wait."""
    if not is_heartbeat_enabled(study._storage):
        return False
    trials = study.get_trials(deepcopy=False)
    return sum(map(counts_against_budget, trials)) < budget and any(t.state == TrialState.RUNNING for t in trials)


def counts_against_budget(t: optuna.trial.FrozenTrial) -> bool:
    """Timed, or failed by its config; not pruned, running, or failed because its worker died."""
    return t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and not failed_by_heartbeat(t))


def study_name(kernel: str, gpu: str, problem: TunedProblem) -> str:
    """kernel|gpu|dtype|dim=value|...[|form], the dims in the problem's order (M, K, N for the GEMM kernels)."""
    dims = "|".join(f"{k}={v}" for k, v in problem.dims.items())
    return f"{kernel}|{gpu}|{problem.dtype}|{dims}" + (f"|{problem.form}" if problem.form else "")


@dataclass(frozen=True)
class TuneSettings:
    sampler: str = "tpe"
    trials: int = 24
    timeout_s: float | None = None
    repeats: int = 20
    retime_top: int = 3
    retime_within: float = 0.03  # of the best's median: configs slower than that are not re-timed
    retime_rounds: int = 4
    prefetch: int = 8
    patience: int = 5  # finished trials in a row without a gain beyond the noise end a study; 0: never early
    seed: int | None = 0

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler {self.sampler!r}: expected one of {', '.join(SAMPLERS)}")
        if self.trials < 1:
            raise ValueError(f"--trials {self.trials}: expected >= 1")
        if self.patience < 0:
            raise ValueError(f"--patience {self.patience}: expected >= 0 (0: no early stop)")
        if self.timeout_s is not None and not 0 < self.timeout_s < math.inf:
            raise ValueError(f"--timeout {self.timeout_s}: expected a positive number of seconds")


@dataclass(frozen=True)
class StudyOutcome:
    study_name: str
    problem: TunedProblem      # a search_spaces.base.Problem for the GEMM kernels
    best: Result | None        # None when no candidate was correct
    baseline_us: float | None
    leaders: tuple[Any, ...] = ()  # the re-timed top configs, fastest first: warm starts for the next bucket
    skipped: bool = False      # already finished in an earlier run
    out_of_budget: bool = False  # not started: less than MIN_STUDY_S left of the run's budget
    error: str | None = None   # where no candidate was correct: the last failed trial's reason


def last_error(study: optuna.Study) -> str | None:
    """The reason of the study's last failed trial that has one (a trial its worker's heartbeat failed has none)."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return next((t.user_attrs["error"] for t in reversed(failed) if "error" in t.user_attrs), None)


def top_configs(study: optuna.Study, k: int, within: float = math.inf,
                to_config: Callable[[dict], Any] = Config.from_dict) -> list[Any]:
    """The `k` fastest distinct configs of the study, those within `within` (a fraction) of the fastest."""
    done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    out: list[Any] = []
    for t in done:
        if t.value > done[0].value * (1 + within):
            break
        c = to_config(t.params)
        if c not in out:
            out.append(c)
        if len(out) == k:
            break
    return out


class Progress(Protocol):
    def study_started(self, study_name: str, trials_left: int) -> None:
        """Once per study, before its search: the trials it may still run (0 when it runs none)."""

    def trial_finished(self, study_name: str, result: Result) -> None: ...


class Tuner:
    def __init__(self, space: SearchSpace, storage: optuna.storages.BaseStorage, recorder: Recorder,
                 gpu: GpuInfo, device: torch.device, timer: Timer, pool: CompilePool, settings: TuneSettings,
                 progress: Progress | None = None):
        self.space, self.storage, self.recorder = space, storage, recorder
        self.gpu, self.device, self.timer, self.pool = gpu, device, timer, pool
        self.settings, self.progress = settings, progress

    def tune(self, problem: TunedProblem, warm_start: list[Any] = (), deadline: float | None = None,
             then: TunedProblem | None = None) -> StudyOutcome:
        """Tune one study, or resume it; `deadline` (a time.time(), the end of a run's budget) bounds its search;
        `then`, the problem tuned next, has its heuristic warm starts compiled ahead."""
        s = self.settings
        name = study_name(self.space.name, self.gpu.short_name, problem)
        deadline = math.inf if deadline is None else deadline
        left = deadline - time.time()
        finished = self.recorder.finished_best(name)
        if left < MIN_STUDY_S and finished is None:
            # Before the study is created: a later run creates it, and so enqueues its warm starts.
            return self._not_started(name, problem)
        axes = self.space.axes(problem)
        sampler = make_sampler(s.sampler, s.seed)
        try:
            study = optuna.create_study(study_name=name, storage=self.storage, direction="minimize", sampler=sampler)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            # Resumed, or shared with a concurrent worker (PostgreSQL): only the creator enqueues warm starts.
            study = optuna.load_study(study_name=name, storage=self.storage, sampler=sampler)
            created = False
            reclaim_orphans(study, self.storage.url)
        # The grid sampler walks the whole feasible grid; the others need only know whether it holds `trials` configs.
        feasible = self.space.feasible(problem, device_smem_limit(self.device),
                                       at_most=None if s.sampler == "grid" else s.trials)
        budget = min(s.trials, len(feasible))
        done = sum(map(counts_against_budget, study.get_trials(deepcopy=False)))
        settled_with = study.user_attrs.get(SETTLED_ATTR)
        settled = s.sampler != "grid" and s.patience > 0 and settled_with is not None and settled_with >= s.patience
        if finished is not None and (done >= budget or settled):
            if self.progress:
                self.progress.study_started(name, 0)
            best = _stored_result(finished, self.space.to_config)
            return StudyOutcome(name, problem, best, None, (best.config,), skipped=True)
        if left < MIN_STUDY_S:  # finished before, with fewer trials than asked now
            return self._not_started(name, problem)
        if finished is None and done >= budget and not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            # Every trial failed: a rerun of as many would time the baseline again, search nothing, and store an
            # empty run. More --trials search on.
            if self.progress:
                self.progress.study_started(name, 0)
            return StudyOutcome(name, problem, None, None, skipped=True, error=last_error(study))
        if self.progress:
            self.progress.study_started(name, max(0, budget - done))

        timeout_s = min(s.timeout_s or math.inf, left)
        run_id = self.recorder.start_run(self.gpu.to_record(), RunKey(
            name, self.space.name, problem.dims, problem.dtype, s.sampler, s.trials,
            timeout_s if timeout_s < math.inf else None, form=problem.form))
        try:
            try:
                evaluator = Evaluator(self.space, problem, self.device, self.timer, self.gpu.l2_bytes)
                base = evaluator.time_baseline(s.repeats)
            except Exception as e:  # noqa: BLE001 - sizes past what torch or the device takes end the run in one line
                raise RuntimeError(f"{name}: cannot make its inputs or run its baseline ({short_error(e)})") from e
            self.recorder.set_baseline(run_id, base.median_us, base.spread_us)
            # The grid is topped up when no other worker is on it (its leftover queue is kept, not repeated).
            idle = not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if s.sampler == "grid" and (created or idle):
                enqueue_grid(study, axes, feasible, budget, s.seed)
            elif s.sampler == "tpe" and created:
                # The GEMM leaders' row tile is grown to the next M bucket's; other spaces' leaders go in as they are.
                leaders = list(warm_start)
                leaders = grown_leaders(leaders, problem.M) if isinstance(problem, Problem) else leaders
                warm = [*leaders, *self.space.heuristics(problem, self.device)]
                enqueue_warm_starts(study, self.space, problem, axes, warm, budget, device_smem_limit(self.device))
            if self._search(study, evaluator, axes, budget, run_id, deadline, then):
                study.set_user_attr(SETTLED_ATTR, s.patience)
            ranked = self._retime(study, evaluator, run_id)
        except BaseException as e:
            self.recorder.finish_run(run_id, "interrupted" if isinstance(e, KeyboardInterrupt) else "failed")
            raise
        self.recorder.finish_run(run_id, "finished", ranked[0][1] if ranked else None)
        return StudyOutcome(name, problem, ranked[0][0] if ranked else None, evaluator.baseline.median_us,
                            tuple(r.config for r, _ in ranked), error=None if ranked else last_error(study))

    def _not_started(self, name: str, problem: Any) -> StudyOutcome:
        if self.progress:
            self.progress.study_started(name, 0)
        return StudyOutcome(name, problem, None, None, out_of_budget=True)

    def _search(self, study: optuna.Study, evaluator: Evaluator, axes: dict[str, list[int]], budget: int,
                run_id: int, run_deadline: float, then: TunedProblem | None = None) -> bool:
        """Search until the budget, the deadline or settling (`Settling`); whether it settled."""
        s = self.settings
        deadline = time.monotonic() + min(s.timeout_s or math.inf, run_deadline - time.time())
        # Bounds the asks when the sampler keeps proposing infeasible or already-tried configs.
        asks_left = 20 * budget
        pending: deque = deque()  # (trial, config, compile future), asked ahead of timing
        recorded = None  # the result of pending[0], stored in our tables but maybe not yet told to Optuna
        settling = Settling(0 if s.sampler == "grid" else s.patience)  # the grid is exhaustive by definition
        try:
            with DeferredInterrupt() as interrupt, Heartbeat(self.storage) as heartbeat:
                while not settling.settled:
                    while (len(pending) < min(s.prefetch, settling.trials_left) and asks_left > 0
                           and time.monotonic() < deadline):
                        interrupt.check()
                        asks_left -= 1
                        asked = self._ask(study, evaluator, axes, budget, heartbeat)
                        if asked is None:
                            break
                        if asked[1] is not None:
                            pending.append((*asked, self.pool.submit(self.space.name, evaluator.problem, asked[1])))
                    if then is not None:
                        self._compile_ahead(then)
                        then = None
                    if not pending:
                        if asks_left <= 0 or time.monotonic() >= deadline or not _others_hold_budget(study, budget):
                            trials = study.get_trials(deepcopy=False)
                            if sum(map(counts_against_budget, trials)) >= budget:
                                # Met, also by other workers' trials while warm starts were still being enqueued
                                # (a shared study's second worker asks as soon as it exists): nobody asks the rest.
                                _prune_waiting(study, "not needed: the study's budget was met")
                            return False
                        # Another worker's trials fill what is left: it tells them, or dies and the heartbeat
                        # requeues them here once their grace period is over. Leaving now would end the study short.
                        interrupt.check()
                        time.sleep(OTHERS_POLL_S)
                        continue
                    interrupt.check()
                    trial, config, compiled = pending[0]
                    error = compiled.result()
                    result = Result(config, False, error) if error else evaluator.evaluate(config, s.repeats)
                    if interrupt.requested and not result.correct:
                        # The failure may be the Ctrl-C's: it also kills a compiler this process runs itself (ptxas,
                        # for a kernel the pool did not build). Pruned, not failed: a rerun tries the config again.
                        interrupt.check()
                    self._record(run_id, "search", trial.number, result,
                                 trial_origin(study, study._storage.get_trial(trial._trial_id), s.sampler))
                    recorded = result
                    _tell(study, trial, result)
                    heartbeat.discard(trial._trial_id)
                    pending.popleft()
                    recorded = None
                    settling.add(result)
                    if self.progress:
                        self.progress.trial_finished(study.study_name, result)
                _prune(study, pending, heartbeat, "not needed: the study settled before timing it")
                if not is_heartbeat_enabled(study._storage):
                    # A shared study keeps its queue: another worker, not settled, may still want it.
                    _prune_waiting(study, "not needed: the study settled before asking it")
                return True
        except BaseException:
            # Leave no trial RUNNING forever. A recorded result is told; what was not timed is pruned: it
            # does not count against the budget, and a rerun may sample the config again.
            if recorded is not None:
                _tell(study, pending.popleft()[0], recorded)
            _prune(study, pending, None, "interrupted before timing")
            raise

    def _compile_ahead(self, problem: TunedProblem) -> None:
        """Hand the pool `problem`'s heuristic warm starts, as its study will ask them (the sampler's own picks are
        not known before the study runs)."""
        if self.settings.sampler != "tpe":
            return
        s, smem = self.settings, device_smem_limit(self.device)
        if self.recorder.finished_best(study_name(self.space.name, self.gpu.short_name, problem)) is not None:
            return  # tuned in an earlier run: most likely skipped
        # Only as many as the study will probably time: it settles a few trials after its best.
        wanted = min(s.prefetch, s.patience) if s.patience else s.prefetch
        for c in warm_configs(self.space, problem, self.space.axes(problem), self.space.heuristics(problem, self.device),
                              smem)[:wanted]:
            self.pool.submit(self.space.name, problem, c)

    def _ask(self, study: optuna.Study, evaluator: Evaluator, axes: dict[str, list[int]], budget: int,
             heartbeat: Heartbeat) -> tuple[optuna.Trial, Any | None] | None:
        """The next trial and its config (None when pruned as infeasible or duplicate); None once the budget is met."""
        shared = is_heartbeat_enabled(study._storage)  # other workers may be asking in this study too
        if shared:
            fail_stale_trials(study)  # a dead worker's trials must not hold budget another worker could fill
        trials = study.get_trials(deepcopy=False)
        # Other workers' running trials count too: together they fill the budget once.
        if sum(counts_against_budget(t) or t.state == TrialState.RUNNING for t in trials) >= budget:
            return None
        with warnings.catch_warnings():
            # Optuna warns that heartbeats only work inside optimize(); `heartbeat` drives them for ask and tell.
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask()
        try:
            heartbeat.add(trial._trial_id)
            config = self.space.to_config({k: trial.suggest_categorical(k, v) for k, v in axes.items()})
            trial.set_user_attr(CONFIG_ATTR, config.to_dict())
            reason = self.space.violation(config, evaluator.problem, evaluator.smem_limit)
            # Unshared, every earlier trial is this process's and recorded its config before this ask.
            earlier = settled_trials(study, trial.number) if shared else trials
            reason = reason or duplicate_of(config, earlier, trial.number,
                                            lambda c: self.space.runs_as(c, evaluator.problem), self.space.to_config)
        except BaseException:
            _tell(study, trial, None)
            raise
        if reason is None:
            return trial, config
        trial.set_user_attr("pruned", reason)
        _tell(study, trial, None)
        heartbeat.discard(trial._trial_id)
        return trial, None

    def _retime(self, study: optuna.Study, evaluator: Evaluator, run_id: int) -> list[tuple[Result, int]]:
        """Time the top configs and the baseline head to head, interleaved; fastest median first."""
        s = self.settings
        top = top_configs(study, s.retime_top, s.retime_within, self.space.to_config)
        if not top:
            return []
        samples: dict[Any, list[float]] = {c: [] for c in [None, *top]}
        for _ in range(s.retime_rounds):
            for c in list(samples):
                try:
                    samples[c] += evaluator.timer.measure(evaluator.workload(c), s.repeats).samples_us
                except RuntimeError:  # e.g. out of memory: that config drops out of the ranking
                    if c is None:
                        raise
                    del samples[c]
        baseline = evaluator.baseline = Timing.from_samples(samples.pop(None))
        self.recorder.set_baseline(run_id, baseline.median_us, baseline.spread_us)
        results = [evaluator.result(c, Timing.from_samples(v), baseline) for c, v in samples.items()]
        origins: dict[Any, str] = {}  # a re-timed config's: that of the first trial that timed it
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            origins.setdefault(self.space.to_config(t.params), trial_origin(study, t, s.sampler))
        ranked = [(r, self._record(run_id, "retime", None, r, origins[r.config])) for r in results]
        return sorted(ranked, key=lambda pair: pair[0].timing.median_us)

    def _record(self, run_id: int, phase: str, trial_number: int | None, r: Result, origin: str) -> int:
        t = r.timing
        return self.recorder.add_measurement(
            run_id, phase=phase, trial_number=trial_number, config=r.config.to_dict(), correct=r.correct,
            error=r.error, median_us=t.median_us if t else None, spread_us=t.spread_us if t else None,
            repeats=len(t.samples_us) if t else None, tflops=r.tflops, gbps=r.gbps, speedup=r.speedup, origin=origin)


def trial_origin(study: optuna.Study, trial: optuna.trial.FrozenTrial, sampler: str) -> str:
    """Where a trial's config came from: enqueued (Optuna's "fixed_params") as the grid sampler's point or as a
    warm start, else proposed by the sampler. A trial requeued for a dead worker (heartbeat.requeue_stale_trial) is
    enqueued too, but repeats the trial it names, and so has that trial's origin."""
    if "requeued_from" in trial.user_attrs:
        storage = study._storage
        trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(
            study._study_id, trial.user_attrs["requeued_from"]))
    if "fixed_params" not in trial.system_attrs:
        return SAMPLER
    return GRID if sampler == "grid" else WARM_START


class Settling:
    """Whether a study's search has settled: `patience` finished trials in a row that did not beat the best by more
    than its noise (the interquartile range of its samples). patience=0 never settles."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best: Result | None = None
        self.since_gain = 0

    def add(self, result: Result) -> None:
        if result.correct and (self.best is None or result.timing.median_us <
                               self.best.timing.median_us - self.best.timing.spread_us):
            self.best, self.since_gain = result, 0
        elif self.best is not None:  # failures before any correct result are no sign of having settled
            self.since_gain += 1

    @property
    def trials_left(self) -> int:
        """How many more trials the search may still need if none of them gains."""
        return self.patience - self.since_gain if self.patience else math.inf

    @property
    def settled(self) -> bool:
        return self.patience > 0 and self.since_gain >= self.patience


def _prune(study: optuna.Study, pending: deque, heartbeat: Heartbeat | None, reason: str) -> None:
    """Prune the trials asked but not timed: they do not count against the budget, a rerun may sample them again."""
    while pending:
        trial, _, _ = pending.popleft()
        trial.set_user_attr("pruned", reason)
        _tell(study, trial, None)
        if heartbeat is not None:
            heartbeat.discard(trial._trial_id)


def _prune_waiting(study: optuna.Study, reason: str) -> None:
    """Prune the enqueued trials nobody will ask, so none waits forever. Each is claimed first, as Optuna's ask claims
    one (WAITING -> RUNNING only succeeds for a trial still waiting), then told PRUNED."""
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
            storage.set_trial_user_attr(t._trial_id, "pruned", reason)
            storage.set_trial_state_values(t._trial_id, TrialState.PRUNED)


def _tell(study: optuna.Study, trial: optuna.Trial, result: Result | None) -> None:
    """Finish a trial: COMPLETE with its median, FAIL with its error, or PRUNED when there is no result."""
    try:
        if result is None:
            study.tell(trial, state=TrialState.PRUNED)
        elif result.correct:
            trial.set_user_attr("speedup", result.speedup)
            study.tell(trial, result.timing.median_us)
        else:
            trial.set_user_attr("error", result.error)
            study.tell(trial, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        pass  # already told when an interruption came in between


def _stored_result(m, to_config: Callable[[dict], Any]) -> Result:
    timing = Timing(m.median_us, m.spread_us, ())
    return Result(to_config(m.config), m.correct, m.error, timing, m.tflops, m.gbps, m.speedup)
