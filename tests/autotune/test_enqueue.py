"""Duplicate detection: across studies resumed after the search space grew an axis, and between two workers
asking trials of one study at the same time."""
import threading
import time

import optuna

from autotune.enqueue import CONFIG_ATTR, duplicate_of, settled_trials
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


def test_a_later_trial_waits_for_an_earlier_one_still_choosing_its_config():
    """Optuna stores a sampled trial's params one suggest at a time: a worker that looked while another was halfway
    saw half a config, found no duplicate, and both timed the same config (seen once in CI on PostgreSQL)."""
    study = optuna.create_study()
    config = Config(16, 32, 64, num_warps=2)
    earlier, later = study.ask(), study.ask()
    earlier.suggest_categorical("BLOCK_M", [16])  # halfway: one param of many
    for name, value in config.to_dict().items():
        later.suggest_categorical(name, [value])
    later.set_user_attr(CONFIG_ATTR, config.to_dict())
    assert duplicate_of(config, study.get_trials(), later.number) is None  # what the race saw
    done = threading.Timer(0.2, lambda: earlier.set_user_attr(CONFIG_ATTR, config.to_dict()))
    done.start()
    start = time.monotonic()
    trials = settled_trials(study, later.number)
    assert 0.15 < time.monotonic() - start < 5
    assert duplicate_of(config, trials, later.number) == f"duplicate of trial {earlier.number}"
    # The earlier trial does not wait for the later one, and runs.
    assert duplicate_of(config, settled_trials(study, earlier.number), earlier.number) is None


def test_a_worker_that_died_while_choosing_holds_nobody_up_for_long():
    study = optuna.create_study()
    study.ask().suggest_categorical("BLOCK_M", [16])
    later = study.ask()
    start = time.monotonic()
    settled_trials(study, later.number, timeout_s=0.1)
    assert time.monotonic() - start < 2
