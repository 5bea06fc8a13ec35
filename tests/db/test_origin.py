"""Where each measured config came from (nvc_measurements.origin), written by the tuner through the FakeTimer
pipeline, and db.queries.search_split's per-study split of warm starts against the sampler's own trials."""
import json

import optuna
import pytest
import torch
from sqlalchemy import text

from autotune.compile_pool import CompilePool
from autotune.heartbeat import requeue_stale_trial
from autotune.tuner import Tuner, TuneSettings, study_name, trial_origin
from db.models import GRID, SAMPLER, WARM_START
from db.queries import search_split
from db.storage import Recorder, open_engine, optuna_storage
from search_spaces import Problem, get_space
from tests.doubles import FakeTimer, fake_gpu

optuna.logging.set_verbosity(optuna.logging.WARNING)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SPACE = get_space("rms_norm_linear")
TPE, GRID_PROBLEM = Problem(1, 64, 96, "float16"), Problem(4, 64, 96, "float16")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> str:
    """A tpe study long enough for the sampler to follow its warm starts, and a grid study."""
    url = f"sqlite:///{tmp_path_factory.mktemp('origin') / 'tune.db'}"
    for sampler, problem in (("tpe", TPE), ("grid", GRID_PROBLEM)):
        Tuner(SPACE, optuna_storage(url), Recorder(open_engine(url)), fake_gpu(), DEVICE, FakeTimer(),
              CompilePool(0, DEVICE), TuneSettings(sampler=sampler, trials=30, repeats=3, patience=0)).tune(problem)
    return url


def measurements(url: str, problem: Problem) -> list[tuple]:
    with open_engine(url).connect() as c:
        return [(phase, n, origin, json.loads(config), us) for phase, n, origin, config, us in c.execute(text(
            "SELECT m.phase, m.trial_number, m.origin, m.config, m.median_us FROM nvc_measurements m JOIN nvc_runs r "
            "ON r.id = m.run_id WHERE r.study_name = :name ORDER BY m.id"),
            dict(name=study_name(SPACE.name, "h100", problem)))]


def test_warm_starts_are_the_enqueued_trials_and_the_rest_the_samplers(tuned):
    study = optuna.load_study(study_name=study_name(SPACE.name, "h100", TPE), storage=optuna_storage(tuned))
    enqueued = {t.number for t in study.trials if "fixed_params" in t.system_attrs}
    rows = measurements(tuned, TPE)
    search = {n: origin for phase, n, origin, _, _ in rows if phase == "search"}
    assert enqueued and set(search) - enqueued  # both kinds were timed
    assert search == {n: WARM_START if n in enqueued else SAMPLER for n in search}
    # A re-timed config carries the origin of the trial that timed it in the search.
    by_config = {str(config): origin for phase, _, origin, config, _ in rows if phase == "search"}
    retimed = [(origin, str(config)) for phase, _, origin, config, _ in rows if phase == "retime"]
    assert retimed and all(by_config[config] == origin for origin, config in retimed)


def test_every_grid_point_is_a_grid_origin(tuned):
    assert {origin for _, _, origin, _, _ in measurements(tuned, GRID_PROBLEM)} == {GRID}


def test_the_split_names_the_best_of_each_origin_and_where_the_result_came_from(tuned):
    split = search_split(open_engine(tuned)).set_index("study_name")
    tpe = split.loc[study_name(SPACE.name, "h100", TPE)]
    search = [r for r in measurements(tuned, TPE) if r[0] == "search"]
    for origin, prefix in ((WARM_START, "warm"), (SAMPLER, "sampler")):
        best = min((r for r in search if r[2] == origin), key=lambda r: (r[4], r[1]))
        assert (tpe[f"{prefix}_config"], tpe[f"{prefix}_us"]) == (best[3], best[4])
        assert tpe[f"{prefix}_spread_us"] > 0
    assert tpe["gain"] == pytest.approx(tpe["warm_us"] / tpe["sampler_us"] - 1)
    first_best = min((r for r in search if r[4] is not None), key=lambda r: (r[4], r[1]))
    assert tpe["best_at"] == first_best[1] and tpe["trials"] == len(search)
    assert tpe["best_step"] == 1 + search.index(first_best)
    winner = [r for r in measurements(tuned, TPE) if r[0] == "retime"]
    assert tpe["best_from"] == min(winner, key=lambda r: r[4])[2]
    grid = split.loc[study_name(SPACE.name, "h100", GRID_PROBLEM)]
    assert grid["best_from"] == GRID and grid["warm_config"] is None and grid["sampler_config"] is None
    assert grid["trials"] == 30 and str(grid["gain"]) == "nan"
    assert search_split(open_engine(tuned), "h200").empty


@pytest.mark.parametrize("enqueued, origin", [(True, WARM_START), (False, SAMPLER)])
def test_a_requeued_trial_has_the_origin_of_the_trial_it_repeats(tmp_path, enqueued, origin):
    study = optuna.create_study(storage=optuna_storage(f"sqlite:///{tmp_path / 'q.db'}"))
    if enqueued:
        study.enqueue_trial({"x": 1})
    stale = study.ask()
    stale.suggest_categorical("x", [1, 2])
    frozen = study._storage.get_trial(stale._trial_id)
    requeue_stale_trial(study, frozen)  # as heartbeat.fail_stale_trials does for a dead worker's trial
    again = study._storage.get_trial(study.ask()._trial_id)
    assert "fixed_params" in again.system_attrs and again.user_attrs["requeued_from"] == stale.number
    assert trial_origin(study, frozen, "tpe") == trial_origin(study, again, "tpe") == origin
