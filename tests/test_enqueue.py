"""Duplicate detection across studies resumed after the search space grew an axis."""
import optuna

from autotune.enqueue import duplicate_of
from kernels.config import Config


def _study_with(params: dict) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions={k: optuna.distributions.CategoricalDistribution([v]) for k, v in params.items()},
        value=1.0))
    return study.get_trials()


def test_a_trial_from_before_an_axis_existed_ran_its_default_value():
    old = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4, "GROUP_M": 8,
           "SPLIT_K": 1, "SUMSQ_IN_LOOP": 0}  # no TMA: stored before the axis was added
    trials = _study_with(old)
    assert duplicate_of(Config(**old), trials, number=5) == "duplicate of trial 0"
    assert duplicate_of(Config(**old, TMA=2), trials, number=5) is None
    assert duplicate_of(Config(**{**old, "BLOCK_N": 64}), trials, number=5) is None
