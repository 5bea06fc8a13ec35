"""Trials left RUNNING by a killed worker on a shared PostgreSQL study: failed once their heartbeat is older than
the grace period, not counted against the budget and queued again; a live worker's trials are never failed.
(SQLite prunes such orphans at once: tests/autotune/test_tuner.py::test_trials_left_running_by_a_killed_process_...;
two worker processes, one SIGKILLed mid-trial: tests/autotune/test_shared_study_faults.py)"""
import threading
import time
import warnings

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import select
from sqlalchemy.orm import Session

from autotune import heartbeat
from autotune.heartbeat import Heartbeat, failed_by_heartbeat, tuning_storage
from tests.doubles import FakeTimer
from autotune.tuner import counts_against_budget, study_name
from db.models import Measurement
from db.storage import open_engine, resolve_url
from kernels.config import Config, device_smem_limit
from tests.autotune.test_tuner import DEVICE, SPACE, TINY, make_tuner

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def pg(pg_url, monkeypatch):
    # Beats every second, stale after 3 s without one: seconds of test instead of minutes.
    monkeypatch.setattr(heartbeat, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(heartbeat, "GRACE_PERIOD_S", 3)
    engine = open_engine(pg_url)
    yield pg_url, engine
    engine.dispose()


def _start_trial(study: optuna.Study, config: Config) -> optuna.Trial:
    """What a worker does when it asks a trial: RUNNING, with its config and a first heartbeat."""
    axes = SPACE.axes(TINY)
    study.enqueue_trial({k: config.to_dict()[k] for k in axes})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ask() outside optimize() warns about heartbeats
        trial = study.ask()
    for k, v in axes.items():
        trial.suggest_categorical(k, v)
    study._storage.record_heartbeat(trial._trial_id)
    return trial


def _check_counted_trials(db, name: str, budget: int, elsewhere: set[int] = frozenset()) -> list:
    """`elsewhere`: trials another worker told, which count but were measured outside this database's tables."""
    trials = optuna.load_study(study_name=name, storage=resolve_url(db[0])).get_trials()
    counted = [t for t in trials if counts_against_budget(t)]
    assert len(counted) == budget
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    configs = [tuple(sorted(t.params.items())) for t in counted]
    assert len(set(configs)) == len(configs)  # no config timed twice, none taken from a live worker
    with Session(db[1]) as s:
        numbers = s.scalars(select(Measurement.trial_number).where(Measurement.phase == "search")).all()
    # One measurement per counted trial, no other.
    assert sorted(numbers) == sorted(t.number for t in counted if t.number not in elsewhere)
    return trials


@pytest.mark.postgres
def test_a_dead_workers_trials_are_failed_after_the_grace_period_and_requeued(pg):
    name = make_tuner(pg, trials=4).tune(TINY).study_name
    study = optuna.load_study(study_name=name, storage=tuning_storage(pg[0]))
    tried = {Config.from_dict(t.params) for t in study.trials}
    fresh = [c for c in SPACE.feasible(TINY, device_smem_limit(DEVICE)) if c not in tried][:5]
    dead = [_start_trial(study, c).number for c in fresh[:3]]  # what a kill -9 leaves: RUNNING, no more beats
    with Heartbeat(study._storage) as other_worker:  # a live worker on the same study, beating for its trial
        live = _start_trial(study, fresh[3])
        other_worker.add(live._trial_id)
        time.sleep(heartbeat.GRACE_PERIOD_S + 1.5)
        # It tells its trial while the tune runs; the tune waits for it rather than end the study short.
        teller = threading.Timer(2.0, lambda: (other_worker.discard(live._trial_id), study.tell(live, 1.0)))
        teller.start()
        make_tuner(pg, trials=9).tune(TINY)
        teller.join()
    trials = _check_counted_trials(pg, name, 9, elsewhere={live.number})
    assert trials[live.number].state == TrialState.COMPLETE
    for n in dead:
        assert failed_by_heartbeat(trials[n]) and not counts_against_budget(trials[n])
    requeued = {t.user_attrs["requeued_from"]: t for t in trials if "requeued_from" in t.user_attrs}
    assert sorted(requeued) == dead
    assert all(t.state == TrialState.COMPLETE and t.params == trials[n].params for n, t in requeued.items())

    # A worker dies holding the last trial of a budget: the tune waits out its grace period, then runs it itself.
    with Heartbeat(study._storage) as doomed:
        last = _start_trial(study, fresh[4])
        doomed.add(last._trial_id)
    started = time.monotonic()
    make_tuner(pg, trials=11).tune(TINY)
    assert time.monotonic() - started >= heartbeat.GRACE_PERIOD_S - 1
    trials = _check_counted_trials(pg, name, 11, elsewhere={live.number})
    assert failed_by_heartbeat(trials[last.number])
    assert [t.state for t in trials if t.user_attrs.get("requeued_from") == last.number] == [TrialState.COMPLETE]


class SlowTimer(FakeTimer):
    """Each candidate takes 0.6 s, so the last of 8 asked ahead waits longer than the grace period; every
    measurement, another worker also fails whatever it finds stale in the study."""

    def __init__(self, url: str):
        self.other_worker = tuning_storage(url)

    def measure(self, workload, repeats):
        if workload.config is not None:
            time.sleep(0.6)
            name = study_name(SPACE.name, "h100", workload.problem)
            heartbeat.fail_stale_trials(optuna.load_study(study_name=name, storage=self.other_worker))
        return super().measure(workload, repeats)


@pytest.mark.postgres
def test_a_live_workers_trials_asked_ahead_are_never_failed(pg):
    outcome = make_tuner(pg, timer=SlowTimer(pg[0]), trials=8, patience=0, prefetch=8, retime_top=1,
                         retime_rounds=1).tune(TINY)
    trials = optuna.load_study(study_name=outcome.study_name, storage=resolve_url(pg[0])).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
