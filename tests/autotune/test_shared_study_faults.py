"""A shared PostgreSQL study survives a worker killed mid-trial: two `nvc tune` processes (tests/fake_cli.py, pretend
GPUs) tune one study, one is SIGKILLed inside a trial, and the other finishes the study with no trial lost or
duplicated, the killed worker's trials failed by their stopped heartbeat and each run again exactly once.
(tests/autotune/test_heartbeat.py checks the same rules in one process, with trials that are never beaten.)"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from autotune.enqueue import CONFIG_ATTR
from autotune.heartbeat import failed_by_heartbeat
from autotune.tuner import counts_against_budget
from db.models import Measurement
from db.storage import resolve_url

ROOT = Path(__file__).resolve().parents[2]
# A beat a second, stale after 2 s without one: a live worker beats twice within the grace period.
INTERVAL_S, GRACE_S = 1, 2
BUDGET = 16
TUNE = ["tune", "--gpu", "h100", "--shapes", "96x64", "--m", "16", "--dtype", "float16", "--trials", str(BUDGET),
        "--patience", "0"]


def _worker(url: str, marker: Path, log: Path) -> subprocess.Popen:
    """`nvc tune` in a process of its own that stops inside the first trial it times until `marker` is removed."""
    env = {**os.environ, "NVC_FAKE_HEARTBEAT": f"{INTERVAL_S},{GRACE_S}", "NVC_FAKE_STALL": str(marker)}
    with log.open("w") as out:  # a file, not a pipe: nobody reads a killed process's output, so a pipe could fill
        return subprocess.Popen([sys.executable, "-m", "tests.fake_cli", "1", *TUNE, "--storage", url], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def _stalled(marker: Path, proc: subprocess.Popen, log: Path) -> dict:
    """The config of the trial `proc` stopped in, once it has."""
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return json.loads(marker.read_text())


def _trials(url: str) -> list[FrozenTrial]:
    storage = optuna.storages.RDBStorage(resolve_url(url))
    (study,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=study.study_name, storage=storage).get_trials()
    storage.engine.dispose()
    return trials


@pytest.mark.postgres
def test_a_worker_killed_mid_trial_leaves_the_other_to_finish_the_study(pg_url, tmp_path):
    killed_marker, survivor_marker = tmp_path / "killed.stall", tmp_path / "survivor.stall"
    killed = _worker(pg_url, killed_marker, tmp_path / "killed.log")
    procs = [killed]
    try:
        stopped_in = _stalled(killed_marker, killed, tmp_path / "killed.log")
        # What it asked ahead (prefetch) and is timing: every trial running now is the first worker's.
        held = {t.number: t for t in _trials(pg_url) if t.state == TrialState.RUNNING}
        survivor = _worker(pg_url, survivor_marker, tmp_path / "survivor.log")
        procs.append(survivor)
        _stalled(survivor_marker, survivor, tmp_path / "survivor.log")
        # Both are mid-trial: the second asked its share beside the first's trials and failed none of them (it
        # looks for stale trials at every ask; these still beat).
        assert all(t.state == TrialState.RUNNING for t in _trials(pg_url) if t.number in held)
        killed.kill()
        assert killed.wait(timeout=30) == -9
        # Released at once: once its own trials are told, the survivor waits for the killed worker's to go stale
        # (rather than end the study short), then fails and requeues them and runs them itself.
        survivor_marker.unlink()
        assert survivor.wait(timeout=120) == 0, (tmp_path / "survivor.log").read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    trials = _trials(pg_url)
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    counted = [t for t in trials if counts_against_budget(t)]
    assert len(counted) == BUDGET
    configs = [tuple(sorted(t.params.items())) for t in counted]
    assert len(set(configs)) == len(configs)  # no config timed twice
    # The killed worker's trials, the one it was timing among them, were failed by their stopped heartbeat...
    assert {t.number for t in trials if failed_by_heartbeat(t)} == set(held)
    assert stopped_in in [t.user_attrs[CONFIG_ATTR] for t in held.values()]
    # ...and each was run again, once, by the survivor, counting against the budget in its place.
    reruns = [t for t in trials if "requeued_from" in t.user_attrs]
    assert sorted(t.user_attrs["requeued_from"] for t in reruns) == sorted(held)
    assert all(counts_against_budget(t) and t.params == held[t.user_attrs["requeued_from"]].params for t in reruns)
    engine = create_engine(resolve_url(pg_url))
    with Session(engine) as s:
        numbers = s.scalars(select(Measurement.trial_number).where(Measurement.phase == "search")).all()
    engine.dispose()
    assert sorted(numbers) == sorted(t.number for t in counted)  # one measurement per counted trial, no other
