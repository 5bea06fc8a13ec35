"""Tuning many studies: the loop one worker runs on one GPU, and one worker process per GPU.

A study is one (kernel, problem): a run may tune several kernels (`nvc tune --shapes llama-7b` tunes every kernel
the runtime runs for that model). The studies are sorted by kernel and shape, buckets ascending, and cut into
contiguous slices, one per worker, so each study has exactly one writer (what SQLite needs) and consecutive buckets
of a shape mostly stay on one worker, where the leaders of one bucket warm-start the next of the same kernel and
shape. A worker tunes its slice most valuable first (`by_value`), so a run's `--budget` (one wall-clock deadline,
the same in every worker's Job) goes where it is worth most. What the workers run on (their devices, clock and
compile processes) is the Hardware passed in (autotune/hardware.py).
"""
from __future__ import annotations

import multiprocessing
import sys
import time
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from tqdm import tqdm

from autotune.compile_pool import CompilePool
from autotune.hardware import Hardware
from autotune.heartbeat import tuning_storage
from autotune.objective import Result, short_error
from autotune.tuner import Progress, StudyOutcome, Tuner, TuneSettings
from db.storage import Recorder, open_engine
from search_spaces import Problem, get_space
from search_spaces.base import TunedProblem

# Batches up to this many rows are decode steps (search_spaces/rms_norm_linear.py prunes its axes at the same M).
DECODE_MAX_M = 64

# One study: the kernel (its search space's name) and the problem (search_spaces.base.Problem for the GEMM kernels,
# the space's own otherwise).
Study = tuple[str, Any]


@dataclass(frozen=True)
class Job:
    """What one worker tunes; picklable, so it can cross into a spawned process."""
    storage_url: str
    studies: tuple[Study, ...]
    settings: TuneSettings
    hardware: Hardware
    device_index: int = 0
    compile_processes: int = 0
    deadline: float | None = None  # time.time() at which the run's --budget ends


def by_value(studies: list[Study]) -> list[Study]:
    """The order a budget is spent in. Decode sizes (M <= DECODE_MAX_M) of every GEMM shape come first: generation
    is almost all decode steps, each of them a few microseconds per site that a config can win back, while at
    prefill sizes the kernel is compute-bound and cuBLAS close to its best. Within them, the shapes with the largest
    weight first, whichever GEMM kernel runs them: decode time is reading the weight, so they hold the most
    microseconds per launch (the problem does not say how often a model launches it). Then the kernels every decode
    step runs besides (their space's `decode_step`: attention), then the GEMMs' prefill sizes, then the other
    kernels. Within a shape M grows, so each bucket is warm-started by the one below; other spaces' problems go
    shape by shape, each shape's buckets ascending (`by_shape`)."""
    def value(study: Study) -> tuple:
        kernel, p = study
        if isinstance(p, Problem):
            return (0 if p.M <= DECODE_MAX_M else 2,
                    (-p.N * p.K * p.elem_bytes, p.dtype, p.K, p.N, p.epilogue.form, p.M, kernel))
        space = get_space(kernel)
        return (1 if space.decode_step else 3, (kernel, by_shape(p, space.bucket_dims)))

    return sorted(studies, key=value)


def by_shape(problem: TunedProblem, bucket_dims: tuple[str, ...]) -> tuple:
    """A problem's (dtype, form, the other dims), the key of its table entry and of the leaders that warm-start its
    next bucket, followed by its bucket dims' values."""
    dims = problem.dims
    return (problem.dtype, problem.form, tuple((k, v) for k, v in dims.items() if k not in bucket_dims),
            tuple(dims[d] for d in bucket_dims))


def _shape(study: Study) -> tuple:
    """The (kernel, shape) whose buckets warm-start each other."""
    kernel, p = study
    if isinstance(p, Problem):
        return kernel, p.K, p.N, p.dtype
    return kernel, *by_shape(p, get_space(kernel).bucket_dims)[:3]


def partition(studies: list[Study], workers: int) -> list[list[Study]]:
    def key(study: Study) -> tuple:
        kernel, p = study
        if isinstance(p, Problem):
            return kernel, (p.dtype, p.K, p.N, p.M)
        return kernel, by_shape(p, get_space(kernel).bucket_dims)

    ordered = sorted(studies, key=key)
    size, extra = divmod(len(ordered), workers)
    out, start = [], 0
    for w in range(workers):
        end = start + size + (w < extra)
        out.append(ordered[start:end])
        start = end
    return out


def run_job(job: Job, progress: Progress | None = None) -> list[StudyOutcome]:
    """Tune the job's studies in order on one device; the leaders of each study warm-start the next bucket of its
    kernel and shape."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = job.hardware.device(job.device_index)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    gpu = job.hardware.detect(job.device_index)
    storage, recorder, timer = tuning_storage(job.storage_url), Recorder(open_engine(job.storage_url)), \
        job.hardware.timer()
    outcomes: list[StudyOutcome] = []
    leaders: dict[tuple, tuple[Any, ...]] = {}  # the last tuned bucket's, per kernel and shape
    with CompilePool(job.compile_processes, device) as pool:
        tuners = {kernel: Tuner(get_space(kernel), storage, recorder, gpu, device, timer, pool=pool,
                                settings=job.settings, progress=progress)
                  for kernel in dict.fromkeys(k for k, _ in job.studies)}
        for i, (kernel, problem) in enumerate(job.studies):
            shape = _shape((kernel, problem))
            # The next study's warm starts compile ahead where it is of the same kernel (its tuner's space).
            after = job.studies[i + 1] if i + 1 < len(job.studies) else None
            then = after[1] if after is not None and after[0] == kernel else None
            outcome = tuners[kernel].tune(problem, list(leaders.get(shape, ())), job.deadline, then)
            outcomes.append(outcome)
            leaders[shape] = outcome.leaders
    return outcomes


class ProgressBar:
    """A tqdm bar over a worker's trials, showing the current study, its best so far and what is left of the budget."""

    def __init__(self, job: Job, position: int = 0):
        # Each study's share starts at the full budget and shrinks to what it really has left when it starts.
        self.share = job.settings.trials
        self.deadline = job.deadline
        self.bar = tqdm(total=len(job.studies) * self.share, position=position, desc=f"gpu{job.device_index}",
                        unit="trial", dynamic_ncols=True)
        self.best: dict[str, Result] = {}

    def study_started(self, study: str, trials_left: int) -> None:
        self.bar.total -= self.share - trials_left
        self.bar.refresh()

    def trial_finished(self, study: str, result: Result) -> None:
        best = self.best.get(study)
        if result.correct and (best is None or result.timing.median_us < best.timing.median_us):
            self.best[study] = best = result
        kernel, _, _, shape = study.split("|", 3)
        shown = f"{best.timing.median_us:.1f}us {best.speedup:.2f}x" if best and best.speedup else "-"
        left = f", budget {max(0.0, self.deadline - time.time()):.0f}s left" if self.deadline is not None else ""
        self.bar.set_postfix_str(f"{kernel} {shape} best {shown}{left}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _worker_main(job: Job, position: int) -> None:
    bar = ProgressBar(job, position)
    try:
        outcomes = run_job(job, bar)
    finally:
        bar.close()
    # Without this line a tune whose every candidate failed (a broken Triton, say) would end as "done".
    wrong = [o for o in outcomes if o.best is None and not o.out_of_budget]
    if wrong:
        earlier = sum(o.skipped for o in wrong)
        tqdm.write(f"gpu{job.device_index}: {len(wrong)} of {len(outcomes)} studies found no correct config, such as "
                   f"{wrong[0].study_name} ({wrong[0].error or 'no trial finished'})" +
                   (f"; {earlier} of them failed every trial in an earlier run and were not run again (more --trials "
                    "search on)" if earlier else ""), file=sys.stderr)
    unstarted = [o for o in outcomes if o.out_of_budget]
    if unstarted:
        tqdm.write(f"gpu{job.device_index}: --budget spent: {len(unstarted)} of {len(outcomes)} studies not started; "
                   f"a rerun with more --budget tunes them", file=sys.stderr)


def _child_main(job: Job, position: int, errors: multiprocessing.SimpleQueue) -> None:
    try:
        _worker_main(job, position)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as e:  # noqa: BLE001 - the parent's one line names it
        errors.put((position, short_error(e)))
        if isinstance(e, (ValueError, RuntimeError)):  # a refusal or a fault the line says all of (StorageError too)
            raise SystemExit(1) from None
        raise  # a bug: its traceback goes to stderr as well


def run_workers(jobs: list[Job]) -> None:
    """One spawned process per job (per GPU); raises RuntimeError naming the workers that failed and why."""
    if len(jobs) == 1:
        _worker_main(jobs[0], 0)
        return
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.SimpleQueue()
    procs = [ctx.Process(target=_child_main, args=(job, i, errors), name=f"tune-gpu{job.device_index}")
             for i, job in enumerate(jobs)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        # The workers got the same Ctrl-C; let them store what they finished before leaving.
        for p in procs:
            p.join()
        raise
    why = {}
    while not errors.empty():
        position, line = errors.get()
        why[position] = line
    for i, p in enumerate(procs):
        why.setdefault(i, f"killed by signal {-p.exitcode}" if p.exitcode < 0 else f"exit {p.exitcode}")
    failed = [f"{p.name} ({why[i]})" for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"tuning worker(s) failed: {', '.join(failed)}")


def make_jobs(storage_url: str, studies: list[Study], settings: TuneSettings, workers: int, hardware: Hardware,
              deadline: float | None = None) -> list[Job]:
    """One job per worker (GPUs 0..workers-1), each with its slice of the studies, most valuable first, and the
    run's `deadline` (time.time(); None: no --budget)."""
    procs = hardware.compile_processes(workers)
    return [Job(storage_url, tuple(by_value(part)), settings, hardware, device_index=i, compile_processes=procs,
                deadline=deadline)
            for i, part in enumerate(partition(studies, workers)) if part]
