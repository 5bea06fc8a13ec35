"""Trials left RUNNING by a killed process: pruned on SQLite, failed after a grace period by their stopped
heartbeat on a shared PostgreSQL study.

Several machines tune one PostgreSQL study at once, so a RUNNING trial found there may be a live worker's and
must not be pruned as SQLite's orphans are. Optuna's heartbeat tells them apart: each worker refreshes a
timestamp of its running trials, and `fail_stale_trials` fails the trials whose timestamp is older than the
grace period. Optuna drives heartbeats only inside `Study.optimize`; the tuner asks and
tells (trials are asked ahead and compiled in a pool), so `Heartbeat` drives them here.

A trial failed this way was never told by its worker: every FAIL the tuner tells carries the "error" that
failed its config, a stale one carries none (`failed_by_heartbeat`). It does not count against the budget,
its config may be sampled again, and it is queued again once (`requeue_stale_trial`).
"""
from __future__ import annotations

import logging
import threading
import warnings

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from db.storage import optuna_storage, resolve_url

# A trial holds the GPU for a few seconds at most and compiles ahead in the pool, so a live worker never goes
# long without a beat; a grace of 6 intervals also rides out a short database or network hiccup without failing
# a live worker's trials, and still hands a dead worker's trials back within about a minute. The cost is one
# row update per running trial (at most the prefetch, 8, plus one) every 10 s per worker.
HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 60

_log = logging.getLogger(__name__)


def tuning_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage for tuning: with heartbeats on PostgreSQL.

    SQLite keeps the tuner's pruning of orphans instead of heartbeats: the workers partition the studies, so a
    RUNNING trial found when a study starts is always an orphan, pruned at once rather than after a grace
    period, and the one file lock that every worker writes through is spared the heartbeat writes."""
    if not resolve_url(url).startswith("postgresql"):
        return optuna_storage(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeat_interval is experimental in Optuna
        return optuna_storage(url, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=GRACE_PERIOD_S,
                              heartbeat_stale_trial_callback=requeue_stale_trial)


def reclaim_orphans(study: optuna.Study, storage_url: str) -> None:
    """Free the budget held by trials that a killed process left RUNNING, before a study is resumed."""
    if storage_url.startswith("sqlite"):
        # One writer per study, and this process has not asked yet: every RUNNING trial is an orphan.
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(t._trial_id, "pruned", "left running by a killed process")
            study.tell(t.number, state=TrialState.PRUNED)
    else:
        fail_stale_trials(study)


def failed_by_heartbeat(t: FrozenTrial) -> bool:
    """A trial failed because its worker stopped beating, not because its config failed."""
    return t.state == TrialState.FAIL and "error" not in t.user_attrs


def requeue_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Run by `fail_stale_trials` for each trial it failed: the config was asked but never told, so it goes back
    into the queue (else a shared grid would miss the point). Once only: a config whose trial is left running
    twice (it may be what kills the workers) is left to the sampler and to the next run's grid top-up."""
    if trial.params and "error" not in trial.user_attrs and "requeued_from" not in trial.user_attrs:
        study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number})


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and requeue) the trials whose heartbeat stopped; does nothing on a storage without heartbeats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class Heartbeat:
    """Beats for this worker's running trials while a search runs; a no-op on a storage without heartbeats.

    `add` records a trial's first beat at once, right after it is asked: Optuna never fails a RUNNING trial that
    has no heartbeat at all. A thread then refreshes every added trial until it is discarded (told)."""

    def __init__(self, storage: optuna.storages.BaseStorage):
        self.storage = storage
        self.interval = storage.get_heartbeat_interval() if is_heartbeat_enabled(storage) else None
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="trial-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.interval is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()

    def add(self, trial_id: int) -> None:
        if self.interval is None:
            return
        self.storage.record_heartbeat(trial_id)
        with self.lock:
            self.trial_ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self.lock:
            self.trial_ids.discard(trial_id)

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                trial_ids = list(self.trial_ids)
            for trial_id in trial_ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:  # noqa: BLE001 - a database hiccup: the next beat retries, within the grace
                    _log.warning("heartbeat of trial %d not recorded: %s", trial_id, str(e).splitlines()[0])
