"""What a study tries first, and what it never tries twice.

Warm starts (heuristic configs, the leaders of the previous M bucket) are moved onto the nearest
values of the study's axes and enqueued, so TPE starts from known-good configs. A leader whose row tile
no longer covers M comes with its two ways to the larger M (`grown_leaders`). The grid sampler is
the feasible grid itself, enqueued in a seeded shuffle. A sampled config equal to an earlier trial's
is recognised before it is compiled or timed. A trial failed because its worker died (its heartbeat stopped)
was never timed, so, like a pruned one, it neither blocks its config nor fills a grid point.
"""
from __future__ import annotations

import dataclasses
import random
import time
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from autotune.heartbeat import failed_by_heartbeat
from kernels.config import Config
from search_spaces.base import SearchSpace


def grown_leaders(leaders: list[Config], M: int) -> list[Config]:
    """The previous bucket's leaders, each followed, where its row tile is shorter than M, by the same tile with
    its row blocks of one column block launched together (GROUP_M=8: the second reads the weight tile from L2,
    where GROUP_M=1 streams the weight from memory once per row block) and by the tile twice as tall."""
    out = []
    for c in leaders:
        out.append(c)
        if c.BLOCK_M < M:
            out += [dataclasses.replace(c, GROUP_M=8), dataclasses.replace(c, BLOCK_M=2 * c.BLOCK_M)]
    return out


def warm_configs(space: SearchSpace, problem: Any, axes: dict[str, list[int]], configs: list[Any],
                 smem_limit: int | None) -> list[Any]:
    """The warm starts as a study runs them: each moved onto the nearest values of its axes, feasible, once each."""
    projected = []
    for c in configs:
        params = c.to_dict()
        projected.append(space.to_config({k: min(v, key=lambda x: abs(x - params[k])) for k, v in axes.items()}))
    return [c for c in dict.fromkeys(projected) if space.violation(c, problem, smem_limit) is None]


def enqueue_warm_starts(study: optuna.Study, space: SearchSpace, problem: Any, axes: dict[str, list[int]],
                        configs: list[Any], budget: int, smem_limit: int | None) -> None:
    for c in warm_configs(space, problem, axes, configs, smem_limit)[:budget]:
        study.enqueue_trial({k: c.to_dict()[k] for k in axes}, skip_if_exists=True)


def enqueue_grid(study: optuna.Study, axes: dict[str, list[int]], feasible: list[Any], budget: int,
                 seed: int | None) -> None:
    """Feasible points not yet in the study, up to the budget, in a seeded shuffle (a smaller budget or
    a timeout then samples the grid fairly; a rerun with a larger budget continues the same order)."""
    trials = study.get_trials(deepcopy=False)
    # Pruned points (interrupted before timing) and those of dead workers go back into the queue.
    seen = {tuple(sorted(t.params.items())) for t in trials
            if t.state not in (TrialState.PRUNED, TrialState.WAITING) and not failed_by_heartbeat(t)}
    seen |= {tuple(sorted(t.system_attrs.get("fixed_params", {}).items()))
             for t in trials if t.state == TrialState.WAITING}
    points = [{k: c.to_dict()[k] for k in axes} for c in feasible]
    random.Random(seed).shuffle(points)
    missing = [p for p in points if tuple(sorted(p.items())) not in seen]
    for params in missing[:max(0, budget - len(seen))]:
        study.enqueue_trial(params)


# A trial's whole config, written in one storage call once its worker has chosen it: Optuna stores a sampled
# trial's params one suggest at a time, so a concurrent worker could otherwise see half a config.
CONFIG_ATTR = "config"


def chosen_config(t: optuna.trial.FrozenTrial) -> dict | None:
    """The config a trial runs, or None while its worker is still choosing it (or it is an old trial that never
    recorded one and has not finished)."""
    return (t.system_attrs.get("fixed_params") or t.user_attrs.get(CONFIG_ATTR)
            or (t.params if t.state.is_finished() else None))


def settled_trials(study: optuna.Study, number: int, timeout_s: float = 10.0) -> list[optuna.trial.FrozenTrial]:
    """The study's trials once every running trial numbered below `number` has recorded its config (a worker
    takes milliseconds between ask and record), or as they are after timeout_s (a worker that died there)."""
    deadline = time.monotonic() + timeout_s
    while True:
        trials = study.get_trials(deepcopy=False)
        choosing = [t for t in trials if t.number < number and t.state == TrialState.RUNNING
                    and chosen_config(t) is None and not failed_by_heartbeat(t)]
        if not choosing or time.monotonic() > deadline:
            return trials
        time.sleep(0.01)


def duplicate_of(config: Any, trials: list[optuna.trial.FrozenTrial], number: int,
                 runs_as: Callable[[Any], Any] = lambda c: c,
                 to_config: Callable[[dict], Any] = Config.from_dict) -> str | None:
    """The earlier trial whose config runs as this one does (`SearchSpace.runs_as`), if any; a concurrent worker's
    trial counts as soon as it has chosen its config (`settled_trials` waits for that), and the later of two
    duplicates yields. `to_config` is the space's (SearchSpace.to_config)."""
    for t in trials:
        if t.number >= number or t.state in (TrialState.PRUNED, TrialState.WAITING) or failed_by_heartbeat(t):
            continue
        given = chosen_config(t)
        # A trial stored before an axis existed lacks it: it ran that axis's default, not every value of it.
        if given and runs_as(to_config(given)) == runs_as(config):
            return f"duplicate of trial {t.number}"
    return None
