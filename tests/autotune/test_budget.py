"""A run's --budget: one wall-clock deadline shared by every study of every worker, spent most valuable study first;
a study gets what is left of it, one with too little left is not started, and a rerun picks up where it stopped.
(The command line's --budget: tests/cli/test_cli.py.)"""
import time

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import select
from sqlalchemy.orm import Session

from autotune import tuner as tuner_module
from autotune.tuner import TuneSettings, study_name
from autotune.workers import by_value, make_jobs, run_job
from db.models import Run
from db.storage import open_engine
from kernels.epilogue import GATED
from search_spaces import Problem
from tests.autotune.test_tuner import SPACE, TINY, make_tuner
from tests.doubles import FakeHardware

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    return url, open_engine(url)


def ordered(problems: list[Problem]) -> list[Problem]:
    return [p for _, p in by_value([(SPACE.name, p) for p in problems])]


def test_decode_sizes_of_every_shape_come_first_and_the_largest_weights_within_them():
    problems = [Problem(m, k, n) for n, k in ((96, 64), (128, 64), (64, 256)) for m in (256, 1, 64, 128)]
    assert [(p.N * p.K, p.M) for p in ordered(problems)] == [
        (16384, 1), (16384, 64), (8192, 1), (8192, 64), (6144, 1), (6144, 64),
        (16384, 128), (16384, 256), (8192, 128), (8192, 256), (6144, 128), (6144, 256)]
    # Wider elements are a larger weight; a paired form of a shape is a study of its own, next to it.
    gated = Problem(1, 64, 96, "float32", epilogue=GATED)
    assert ordered([Problem(1, 64, 128, "float16"), gated, Problem(1, 64, 96, "float32")]) == [
        Problem(1, 64, 96, "float32"), gated, Problem(1, 64, 128, "float16")]


def test_every_worker_gets_its_slice_most_valuable_first_and_the_same_deadline():
    problems = [Problem(m, 64, n) for n in (96, 128) for m in (128, 1)]
    jobs = make_jobs("sqlite:///unused.db", [(SPACE.name, p) for p in problems], TuneSettings(), 2, FakeHardware(2),
                     deadline=123.0)
    assert [[(p.N, p.M) for _, p in job.studies] for job in jobs] == [[(96, 1), (96, 128)], [(128, 1), (128, 128)]]
    assert [job.deadline for job in jobs] == [123.0, 123.0]


def _runs(db) -> list[Run]:
    with Session(db[1]) as s:
        return s.scalars(select(Run).order_by(Run.id)).all()


def test_a_study_started_near_the_deadline_gets_what_is_left(db, monkeypatch):
    monkeypatch.setattr(tuner_module, "MIN_STUDY_S", 0.5)
    started = time.time()
    outcome = make_tuner(db, trials=1000, timeout_s=60, patience=0).tune(TINY, deadline=started + 2)
    # Stopped at the deadline, not at its 60 s timeout: what was asked ahead is timed, then the leaders re-timed.
    assert time.time() - started < 2 + 5
    (run,) = _runs(db)
    assert run.status == "finished" and 1.5 < run.timeout_s <= 2 and outcome.best is not None
    study = optuna.load_study(study_name=outcome.study_name, storage=db[0])
    assert 0 < len(study.get_trials(states=(TrialState.COMPLETE,))) < 128  # of the feasible configs


def test_a_study_with_too_little_budget_left_is_not_started_and_a_rerun_starts_it(db):
    late = make_tuner(db, trials=3).tune(TINY, deadline=time.time() + tuner_module.MIN_STUDY_S - 1)
    assert late.out_of_budget and late.best is None
    # Nothing stored: the run that starts it creates the study, and so enqueues its warm starts.
    assert not optuna.get_all_study_summaries(db[0]) and not _runs(db)
    first = make_tuner(db, trials=3).tune(TINY, deadline=time.time() + 60)
    assert not first.out_of_budget and first.best is not None
    # Out of budget, a finished study is still reported as finished; one that has trials to go is not resumed.
    assert make_tuner(db, trials=3).tune(TINY, deadline=time.time()).skipped
    more = make_tuner(db, trials=5).tune(TINY, deadline=time.time())
    assert more.out_of_budget and len(_runs(db)) == 1


def test_one_deadline_for_all_workers(db, monkeypatch):
    # Two workers' jobs run here one after the other: the deadline is a time of day, so the second finds it spent.
    monkeypatch.setattr(tuner_module, "MIN_STUDY_S", 0.5)
    url = db[0]
    problems = [Problem(1, 64, 96, "float16"), Problem(1, 64, 128, "float16"), Problem(128, 64, 96, "float16")]
    started = time.time()
    jobs = make_jobs(url, [(SPACE.name, p) for p in problems], TuneSettings(trials=1000, patience=0), 2, FakeHardware(2),
                     started + 2)
    first, second = (run_job(job) for job in jobs)
    assert [o.out_of_budget for o in first] == [False, True] and [o.out_of_budget for o in second] == [True]
    assert time.time() - started < 2 + 5
    assert [r.study_name for r in _runs(db)] == [study_name(SPACE.name, "h100", problems[0])]
