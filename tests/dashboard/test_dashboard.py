"""`cli.py dashboard`: databases filled by the tuning pipeline with FakeTimer (a test double for the
GPU clock), an empty one, and 1,800 trials written straight through Optuna and our models."""
import dataclasses
import errno
import io
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from sqlalchemy.orm import Session

from autotune.compile_pool import CompilePool
from autotune.export import build_table
from tests.doubles import FakeTimer, fake_gpu
from autotune.timer import Workload
from autotune.tuner import Tuner, TuneSettings, study_name
from dashboard.command import dashboard_command
from dashboard import figures
from dashboard.data import best_so_far, sampler_curves, short_config
from db.models import Measurement
from db.queries import best_results, search_split, split_summary
from db.storage import Recorder, RunKey, open_engine, optuna_storage
from search_spaces import Problem, get_space
from search_spaces.rms_norm_linear import RmsNormLinearSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Correctness is checked by running the real kernel: compiled on a GPU, in Triton's interpreter on the CPU.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PLOTLY_JS_BANNER = "* plotly.js v"
FIGURE_DIV = 'class="plotly-graph-div"'
OUT_OF_RESOURCES = "out of resource: shared memory, Required: 300000, Hardware limit: 232448"


class FailingSpace(RmsNormLinearSpace):
    """The real kernel, except that the configs `fails` picks raise `error` at launch, as a broken kernel does."""

    def __init__(self, fails, error: str):
        self.fails, self.error = fails, error

    def launcher(self, config):
        if config is not None and self.fails(config):
            def fail(inputs):
                raise RuntimeError(self.error)
            return fail
        return super().launcher(config)


EIGHT_WARPS_FAIL = FailingSpace(lambda c: c.num_warps == 8, OUT_OF_RESOURCES)
NOTHING_RUNS = FailingSpace(lambda c: True, "CUDA error: an illegal memory access was encountered")


def tune(url: str, gpu, problems: list[Problem], sampler: str, trials: int, space=EIGHT_WARPS_FAIL) -> None:
    tuner = Tuner(space, optuna_storage(url), Recorder(open_engine(url)), gpu, DEVICE, FakeTimer(),
                  CompilePool(0, DEVICE), TuneSettings(sampler=sampler, trials=trials, repeats=3))
    for p in problems:
        tuner.tune(p)


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> str:
    """Two GPUs, tpe and random studies, failed and pruned trials, a study with a single trial and one where
    nothing ran, one exported table."""
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'tune.db'}"
    h100 = fake_gpu()
    h200 = dataclasses.replace(h100, name="NVIDIA H200 (FakeTimer test double)", short_name="h200")
    tune(url, h100, [Problem(1, 64, 96, "float16"), Problem(4, 64, 96, "float16")], "tpe", 10)
    tune(url, h100, [Problem(1, 64, 128, "float16"), Problem(4, 64, 128, "float16")], "random", 8)
    tune(url, h200, [Problem(1, 64, 96, "float16"), Problem(4, 64, 96, "float16")], "tpe", 6)
    tune(url, h100, [Problem(2, 64, 96, "float16")], "tpe", 1)
    tune(url, h100, [Problem(1, 64, 80, "float16")], "tpe", 3, NOTHING_RUNS)
    engine = open_engine(url)
    Recorder(engine).add_exported_table("h100", "tables/h100.json", build_table(best_results(engine, "h100")))
    return url


def read_page(path) -> str:
    """The page with the HTML-safe escapes of plotly's figure JSON undone, so figure titles can be searched."""
    text = path.read_text()
    for escape, char in (("\\u002f", "/"), ("\\u003c", "<"), ("\\u003e", ">"), ("\\u0026", "&")):
        text = text.replace(escape, char)
    return text


def dashboard(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(dashboard_command, list(args))
    return r.exit_code, r.output


def test_sampler_curves_carry_the_best_over_failures_and_compare_at_equal_shares_of_the_budget():
    search = pd.DataFrame(dict(
        study_name=["a"] * 5 + ["b"] * 3 + ["never"] * 2, trial_number=[0, 1, 2, 3, 4, 0, 1, 2, 0, 1],
        correct=[False, True, False, True, True, True, False, True, False, False],
        median_us=[None, 5, None, 4, 6, 3, None, 2, None, None], sampler=["tpe"] * 5 + ["random"] * 3 + ["tpe"] * 2))
    best = best_so_far(search)["best_us"]
    assert pd.isna(best[0]) and best[1:8].tolist() == [5, 5, 4, 4, 3, 3, 2]
    curves = sampler_curves(search, points=10).set_index(["sampler", "step"])
    # Study "a" has found nothing after 10% and 20% of its 5 trials (a gap), 5 us after 30%, its best 4 us at 80%.
    assert pd.isna(curves.loc[("tpe", 20.0), "ratio"])
    assert curves.loc[("tpe", 30.0), "ratio"] == 1.25 and curves.loc[("tpe", 80.0), "ratio"] == 1.0
    assert curves.loc[("random", 60.0), "ratio"] == 1.5 and curves.loc[("random", 100.0), "ratio"] == 1.0
    # A study that never timed a correct config has no best to approach, so it is left out.
    assert curves.loc[("tpe", 100.0), "studies"] == 1


def test_filled_database_gives_every_section(filled, tmp_path):
    out = tmp_path / "d.html"
    code, said = dashboard("--storage", filled, "--out", str(out))
    assert code == 0, said
    assert said.startswith(f"wrote {out}") and "8 studies" in said and "GPUs h100, h200" in said
    page = read_page(out)
    assert page.count(PLOTLY_JS_BANNER) == 1
    for wanted in ("h100: baseline latency / tuned latency", "h200: baseline latency / tuned latency",
                 "Studies in the database, by sampler", "Across GPUs", "tables/h100.json", OUT_OF_RESOURCES,
                 "Optimization history", "Parameter importance", "Parallel coordinates of the timed configs",
                 "PRUNED"):
        assert wanted in page, wanted
    # No default-config or torch.compile timings in the database: said, not invented.
    assert page.count("Not measured: the database holds no timings of this") == 2
    for name in ("rms_norm_linear|h100|float16|M=1|K=64|N=96", "rms_norm_linear|h200|float16|M=4|K=64|N=96"):
        assert f"<h3>{name}</h3>" in page
    assert "Parameter importance needs at least 2 timed trials; this study has 1." in page
    assert "No config was timed correctly" in page and "CUDA error: an illegal memory access" in page
    # Two heatmaps, the samplers, the GPU comparison, the parallel coordinates, history and importance of 6 studies,
    # the history of the single-trial study, nothing of the study where nothing ran.
    assert page.count(FIGURE_DIV) == 2 + 1 + 1 + 1 + 2 * 6 + 1


def test_through_cli_py(filled, tmp_path):
    out = tmp_path / "d.html"
    r = subprocess.run([sys.executable, "cli.py", "dashboard", "--storage", filled, "--out", str(out)],
                       cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}") and out.stat().st_size > 0


def test_gpu_filter(filled, tmp_path):
    out = tmp_path / "d.html"
    code, said = dashboard("--storage", filled, "--gpu", "H200", "--out", str(out))
    assert code == 0, said
    page = read_page(out)
    assert "2 studies" in said and "|h200|" in page and "|h100|" not in page and "Across GPUs" not in page
    code, said = dashboard("--storage", filled, "--gpu", "a100", "--out", str(out))
    assert code == 0 and "holds no tuning results for GPU a100 yet" in said
    code, said = dashboard("--storage", filled, "--gpu", "h1000", "--out", str(out))
    assert code != 0 and "--gpu 'h1000': unknown GPU name" in said


def write_bench_csvs(tmp_path) -> tuple[str, str]:
    compare = tmp_path / "compare.csv"
    pd.DataFrame(dict(shape=["t.qkv"] * 2, K=[64, 64], N=[96, 96], M=[1, 4], baseline_us=[8.0, 9.0],
                      default_us=[7.0, 7.5], tuned_us=[6.0, float("nan")], torch_compile_us=[7.8, 8.0])
                 ).to_csv(compare, index=False)
    curves = tmp_path / "search_curves.csv"
    pd.DataFrame([dict(shape="t.qkv", M=1, sampler=s, seed=0, trial=i + 1, best_us=6.0 + 2 / (i + 1 + (s == "tpe")))
                  for s in ("grid", "tpe", "random") for i in range(5)]).to_csv(curves, index=False)
    return str(compare), str(curves)


def test_bench_csvs_fill_the_default_and_torch_compile_heatmaps(filled, tmp_path):
    compare, curves = write_bench_csvs(tmp_path)
    out = tmp_path / "d.html"
    code, said = dashboard("--storage", filled, "--gpu", "h100", "--out", str(out), "--bench-csv", compare,
                           "--bench-csv", curves)
    assert code == 0, said
    page = read_page(out)
    assert "Not measured" not in page
    for wanted in ("h100: default latency / tuned latency", "h100: torch_compile latency / tuned latency",
                 "bench_search.py: tpe and random replayed against the full grid"):
        assert wanted in page, wanted
    # The CSVs do not name their GPU: with two GPUs stored, --gpu must say which one measured them.
    code, said = dashboard("--storage", filled, "--out", str(out), "--bench-csv", compare)
    assert code != 0 and "pass --gpu" in said
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    code, said = dashboard("--storage", filled, "--gpu", "h100", "--out", str(out), "--bench-csv", str(bad))
    assert code != 0 and f"--bench-csv {bad}: expected bench_search.py's compare.csv" in said


@pytest.mark.parametrize("kind", ["no tables", "no runs"])
def test_empty_database_gives_a_page_that_says_so(tmp_path, kind):
    db = tmp_path / "empty.db"
    if kind == "no tables":
        sqlite3.connect(db).close()
    else:
        open_engine(f"sqlite:///{db}").dispose()
    out = tmp_path / "d.html"
    code, said = dashboard("--storage", f"sqlite:///{db}", "--out", str(out))
    assert code == 0, said
    assert said.startswith(f"sqlite:///{db} holds no tuning results yet; wrote {out}")
    page = read_page(out)
    assert "This database holds no tuning results yet" in page and FIGURE_DIV not in page


def test_missing_or_foreign_database_is_one_clear_error(tmp_path):
    out = tmp_path / "d.html"
    code, said = dashboard("--storage", f"sqlite:///{tmp_path / 'nope.db'}", "--out", str(out))
    assert code != 0 and "no database file at" in said
    assert not (tmp_path / "nope.db").exists() and not out.exists()
    code, said = dashboard("--storage", "nosuchdb://x", "--out", str(out))
    assert code != 0 and "not a valid database URL" in said




def test_a_database_whose_every_trial_failed_gives_a_page(tmp_path):
    url = f"sqlite:///{tmp_path / 'failed.db'}"
    tune(url, fake_gpu(), [Problem(1, 64, 80, "float16")], "tpe", 3, NOTHING_RUNS)
    code, said = dashboard("--storage", url, "--out", str(tmp_path / "d.html"))
    assert code == 0 and "1 studies, 3 trials" in said, said


def test_an_out_that_cannot_be_written_is_one_line_and_leaves_the_old_page(filled, tmp_path, monkeypatch):
    code, said = dashboard("--storage", filled, "--out", str(tmp_path))
    assert code != 0 and said.strip() == f"Error: --out {tmp_path}: is a folder; expected the path of the HTML file " \
                                          "to write"
    (tmp_path / "file").write_text("")
    code, said = dashboard("--storage", filled, "--out", str(tmp_path / "file" / "d.html"))
    assert code != 0 and f"cannot write the page (File exists: {tmp_path / 'file'})" in said
    old = tmp_path / "d.html"
    old.write_text("old page")
    with monkeypatch.context() as m:  # a read-only folder: the temporary file's name is none of the user's
        def read_only(dir, prefix, suffix):
            raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}x1y2{suffix}")
        m.setattr(tempfile, "mkstemp", read_only)
        code, said = dashboard("--storage", filled, "--out", str(old))
    assert code != 0 and said.strip() == f"Error: --out {old}: cannot write the page (Permission denied); nothing " \
                                          "was written"

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_disk)
    code, said = dashboard("--storage", filled, "--out", str(old))
    assert code != 0 and said.strip() == f"Error: --out {old}: cannot write the page (No space left on device); " \
                                          "nothing was written"
    assert old.read_text() == "old page" and sorted(os.listdir(tmp_path)) == ["d.html", "file"]


@pytest.mark.postgres
def test_postgresql_empty_then_filled(pg_url, tmp_path):
    out = tmp_path / "d.html"
    code, said = dashboard("--storage", pg_url, "--out", str(out))
    assert code == 0 and "holds no tuning results yet" in said, said
    tune(pg_url, fake_gpu(), [Problem(1, 64, 96, "float16")], "tpe", 4)
    code, said = dashboard("--storage", pg_url, "--out", str(out))
    assert code == 0 and "1 studies, 4 trials" in said, said
    assert "<h3>rms_norm_linear|h100|float16|M=1|K=64|N=96</h3>" in read_page(out)


def fill_directly(url: str, trials_per_study: list[int]) -> None:
    """Studies of FakeTimer-timed random configs, written through Optuna and Recorder (no kernel runs)."""
    space, timer, gpu, recorder = get_space("rms_norm_linear"), FakeTimer(), fake_gpu(), Recorder(open_engine(url))
    storage, rng = optuna_storage(url), random.Random(0)
    for i, trials in enumerate(trials_per_study):
        problem = Problem(32 * 2 ** (i % 8), 4096, 4096 * (1 + i // 8))
        name = study_name(space.name, gpu.short_name, problem)
        axes, configs = space.axes(problem), space.feasible(problem, None)
        distributions = {k: optuna.distributions.CategoricalDistribution(v) for k, v in axes.items()}
        run_id = recorder.start_run(gpu.to_record(), RunKey(name, space.name, problem.dims, problem.dtype,
                                                            "random", trials, None))
        base_us = timer.measure(Workload(problem, None, None, 1), 1).median_us
        recorder.set_baseline(run_id, base_us, 0.1)
        frozen, rows = [], []
        for n in range(trials):
            config = rng.choice(configs)
            us = timer.measure(Workload(problem, config, None, 1), 1).median_us
            ok = n % 10 != 3
            frozen.append(optuna.trial.create_trial(
                params={k: config.to_dict()[k] for k in axes}, distributions=distributions, value=us if ok else None,
                state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
                user_attrs={} if ok else {"error": "CompilationError: at 12:4: too many registers"}))
            rows.append(Measurement(run_id=run_id, phase="search", trial_number=n, config=config.to_dict(), correct=ok,
                                    error=None if ok else frozen[-1].user_attrs["error"], median_us=us if ok else None,
                                    speedup=base_us / us if ok else None))
        optuna.create_study(study_name=name, storage=storage).add_trials(frozen)
        best = min((r for r in rows if r.correct), key=lambda r: r.median_us)
        best_id = recorder.add_measurement(run_id, phase="retime", config=best.config, correct=True,
                                           median_us=best.median_us, spread_us=0.1, speedup=best.speedup)
        with Session(recorder.engine) as s, s.begin():
            s.add_all(rows)
        recorder.finish_run(run_id, "finished", best_id)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> str:
    """1,800 trials in 14 studies, two of them of 600 trials (past what the page draws of one study)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('big') / 'big.db'}"
    fill_directly(url, [600, 600] + [50] * 12)
    return url


def test_thousands_of_trials_give_a_bounded_page(big, tmp_path):
    out = tmp_path / "d.html"
    start = time.perf_counter()
    code, said = dashboard("--storage", big, "--out", str(out))
    seconds = time.perf_counter() - start
    assert code == 0, said
    assert "14 studies, 1800 trials" in said
    page = read_page(out)
    assert len(page.encode()) < 8 * 2**20
    assert seconds < 15
    assert "The 12 studies with the most trials of 14" in page
    assert page.count("(300 of 540 timed trials drawn)") == 2 and "(400 of 540 timed configs drawn)" in page
    assert page.count(PLOTLY_JS_BANNER) == 1


def chromium(profile_dir):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile_dir}", "--window-size=1400,2400"):
        options.add_argument(arg)
    # The browser log holds every console error, including those thrown before any hook could be injected.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


RENDERED = "return [...document.querySelectorAll('.plotly-graph-div')].filter(d => d.querySelector('.main-svg')).length"


@pytest.mark.browser
@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian's chromium and chromium-driver (CI installs them)")
@pytest.mark.parametrize("kind", ["empty", "filled", "split", "thousands"])
def test_page_renders_in_a_headless_browser(kind, request, tmp_path):
    from PIL import Image
    from selenium.webdriver.support.ui import WebDriverWait

    if kind == "empty":
        url = f"sqlite:///{tmp_path / 'empty.db'}"
        open_engine(url).dispose()
    else:
        url = request.getfixturevalue({"filled": "filled", "split": "split_db"}.get(kind, "big"))
    out = tmp_path / "d.html"
    code, said = dashboard("--storage", url, "--out", str(out))
    assert code == 0, said
    n_figures = out.read_text().count(FIGURE_DIV)
    assert (n_figures == 0) == (kind == "empty")
    driver = chromium(tmp_path / "profile")
    try:
        start = time.perf_counter()
        driver.get(out.as_uri())
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(RENDERED) == n_figures)
        seconds = time.perf_counter() - start
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    assert not errors, errors
    # Headless Chromium draws WebGL (the parallel coordinates) in software; a desktop browser is faster still.
    assert seconds < 15
    (tmp_path / f"{kind}.png").write_bytes(png)
    colours = Image.open(io.BytesIO(png)).convert("RGB").getcolors(maxcolors=1 << 24)
    # Text alone anti-aliases into a few dozen greys; heatmaps and plots bring hundreds of colours.
    assert len(colours) > (20 if kind == "empty" else 200), len(colours)


@pytest.fixture(scope="module")
def split_db(tmp_path_factory) -> str:
    """A tpe study long enough for the sampler's own trials to follow its warm starts, and a random study (no warm
    starts)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('split') / 'split.db'}"
    tuner = Tuner(EIGHT_WARPS_FAIL, optuna_storage(url), Recorder(open_engine(url)), fake_gpu(), DEVICE, FakeTimer(),
                  CompilePool(0, DEVICE), TuneSettings(trials=30, repeats=3, patience=0))
    tuner.tune(Problem(1, 64, 96, "float16"))
    tune(url, fake_gpu(), [Problem(4, 64, 96, "float16")], "random", 4)
    return url


def test_the_split_of_warm_starts_and_the_sampler_is_drawn_and_counted(split_db, tmp_path):
    url = split_db
    split = search_split(open_engine(url)).set_index("study_name")
    tpe = split.loc[study_name("rms_norm_linear", "h100", Problem(1, 64, 96, "float16"))]
    assert pd.notna(tpe["gain"])
    out = tmp_path / "d.html"
    code, said = dashboard("--storage", url, "--out", str(out))
    assert code == 0, said
    page = read_page(out)
    assert f"<p>{split_summary(split.reset_index())}.</p>".replace("'", "&#x27;") in page
    assert "The sampler's best trial against the best warm start" in page and '"best: ' in page
    assert page.count(FIGURE_DIV) == 1 + 1 + 1 + 1 + 2 * 2  # heatmap, samplers, split, parcoords, 2 studies
    # The table of all studies says where each best came from.
    assert f"<td>{tpe['best_from']}</td>" in page and "<th>sampler_gain_pct</th>" in page


def test_the_split_figure_draws_a_bounded_number_of_studies():
    n = 1000
    split = pd.DataFrame(dict(study_name=[f"s{i}" for i in range(n)], gain=[(i - 500) / 1e4 for i in range(n)],
                              best_from=["sampler" if i > 500 else "warm_start" for i in range(n)],
                              warm_us=10.0, sampler_us=10.0, best_step=pd.array([1] * n, dtype="Int64"), trials=30))
    fig = figures.warm_vs_sampler(split)
    drawn = [x for trace in fig.data for x in trace.x]
    assert len(drawn) == figures.SPLIT_BARS and {"s999", "s0"} <= set(drawn)
    assert f"({figures.SPLIT_BARS} of {n} studies drawn)" in fig.layout.title.text
    assert {trace.name for trace in fig.data} == {"best: warm start", "best: sampler"}


def test_config_labels_tell_the_eviction_hint_and_gemv_tiles_apart():
    gemv = dict(BLOCK_M=4, BLOCK_N=16, BLOCK_K=128, num_warps=1, num_stages=6, GROUP_M=8, SPLIT_K=1)
    assert short_config({**gemv, "EVICT": 1}) == "4x16x128 gemv w1 s6 g8 sk1 ssq0 tma0 ev1"
    assert short_config(gemv).endswith(" ev0")  # stored before the field existed: its default
    assert "gemv" not in short_config({**gemv, "BLOCK_M": 16})
