"""The Optuna samplers a study can use: `tpe` (the default), `random` and `grid`."""
from __future__ import annotations

import optuna

SAMPLERS = ("tpe", "random", "grid")


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=6)
    if name in ("random", "grid"):
        # The grid is enqueued as fixed trials (only its feasible points); the sampler is never consulted.
        # Optuna's GridSampler would also walk the infeasible points, and it calls Study.stop() when
        # exhausted, which ask-and-tell does not allow.
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"--sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
