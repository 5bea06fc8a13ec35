"""The command line (nvc_cli) end to end without a GPU clock: the commands run in-process on FakeHardware (pretend
GPUs timed by FakeTimer, tests/doubles.py), passed in as click's context object; correctness checks run the real
kernel on small shapes (through Triton's interpreter on the CPU, which conftest selects and subprocesses inherit;
compiled on a GPU when there is one). What needs a process of its own (no GPU at all, a real Ctrl-C, two processes
sharing a study) runs `cli.py` or tests/fake_cli.py in a subprocess."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner, Result
from optuna.trial import TrialState
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from autotune import tuner
from db.models import ExportedTable, Measurement, Run
from db.storage import resolve_url
from kernels.config import Config
from nvc_cli.commands import main
from tests import tuning_tables
from tests.conftest import PG_UNREACHABLE
from tests.doubles import FakeHardware, FakeTimer
from tuning_table import load_table

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--shapes", "96x64", "--m", "1,4", "--dtype", "float16", "--trials", "5"]


def nvc(*args: str, gpus: int = 1) -> Result:
    """The command in-process, on `gpus` pretend GPUs."""
    return CliRunner().invoke(main, list(args), obj=FakeHardware(count=gpus))


def fake_cli_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The command in a process of its own, on one pretend GPU (tests/fake_cli.py), in a session of its own as a
    terminal starts it: a Ctrl-C there is a SIGINT to its whole process group (`os.killpg`)."""
    return subprocess.Popen([sys.executable, "-m", "tests.fake_cli", "1", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                            start_new_session=True)


def processes_with(env_marker: str) -> list[int]:
    """The live processes whose environment holds `env_marker` (NAME=value): a process and all it started."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if env_marker.encode() in (proc / "environ").read_bytes().split(b"\0") and \
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX":
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def counted_trials(url: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    storage = optuna.storages.RDBStorage(resolve_url(url))
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).get_trials()
            for s in optuna.get_all_study_summaries(storage)}


def check_no_trial_lost_or_duplicated(url: str, study: str, trials: list, interrupted: bool = False) -> None:
    # An interrupted study may still queue warm starts (WAITING) for its rerun; a finished one none.
    assert not [t for t in trials if t.state == TrialState.RUNNING or (t.state == TrialState.WAITING and not interrupted)]
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    engine = create_engine(resolve_url(url))
    with Session(engine) as s:
        numbers = s.scalars(select(Measurement.trial_number).join(Run, Run.id == Measurement.run_id)
                            .where(Run.study_name == study, Measurement.phase == "search")).all()
    engine.dispose()
    # Every finished trial has exactly one measurement, and every measurement a finished trial.
    assert sorted(numbers) == sorted(t.number for t in done)
    configs = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(configs)) == len(configs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_tune_without_cuda_is_one_clear_line(tmp_path):
    db = tmp_path / "t.db"
    # The real hardware (CudaHardware), in a process of its own as a user runs it.
    r = subprocess.run([sys.executable, "cli.py", "tune", "--gpu", "h100", "--shapes", "llama-7b", "--storage",
                        f"sqlite:///{db}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        "Error: no CUDA device visible: tuning needs an NVIDIA GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES)"]
    assert not db.exists()


def test_tune_show_export_through_the_cli(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    r = nvc("tune", "--gpu", "h100", *SMALL, "--storage", url)
    assert r.exit_code == 0, r.output
    shown = nvc("show", "--storage", url)
    # The header, M=1, M=4, and where the best configs came from (tests/cli/test_show.py).
    assert shown.exit_code == 0 and len(shown.stdout.strip().splitlines()) == 4
    assert "float16" in shown.stdout and "speedup" in shown.stdout
    assert nvc("show", "--gpu", "h100", "--storage", url).stdout == shown.stdout
    other = nvc("show", "--gpu", "h200", "--storage", url)
    assert other.exit_code == 1 and other.output.strip().splitlines() == [
        f"Error: no finished tuning results for h200 in {url}; it has results for: h100"]
    out = tmp_path / "tables" / "h100.json"
    r = nvc("export-table", "--gpu", "h100", "--out", str(out), "--storage", url)
    assert r.exit_code == 0, r.output
    table = load_table(out)
    assert table.gpu == "h100" and table.triton and table.bucket("rms_norm_linear", 64, 96, torch.float16, 3) is not None
    data = json.loads(out.read_text())
    assert [b["M"] for b in data["kernels"]["rms_norm_linear"][0]["buckets"]] == [1, 4]
    with Session(create_engine(url)) as s:
        assert s.scalar(select(func.count()).select_from(ExportedTable)) == 1
    r = nvc("show", "--table", str(out))
    assert r.exit_code == 0 and "16x" in r.stdout
    # A rerun of a finished tune does nothing new.
    r = nvc("tune", "--gpu", "h100", *SMALL, "--storage", url)
    with Session(create_engine(url)) as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 2


def tiny_mistral(tmp_path, heads: int, kv_heads: int) -> tuple:
    """A tiny Mistral-like decoder's config.json (hidden 128) and a fresh database URL beside it."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(model_type="mistral", hidden_size=128, intermediate_size=96,
                                      num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=80)))
    return config, f"sqlite:///{tmp_path / 't.db'}"


def test_tune_a_model_config_runs_its_sites_in_their_forms_and_exports_them(tmp_path):
    # 2 query heads of 64 sharing 1 KV head, so QKV is rotary, gate/up gated.
    config, url = tiny_mistral(tmp_path, heads=2, kv_heads=1)
    r = nvc("tune", "--gpu", "h100", "--kernel", "rms_norm_linear", "--shapes", str(config), "--m", "4", "--trials",
            "2", "--dtype", "float16", "--storage", url)
    assert r.exit_code == 0, r.output
    trials = counted_trials(url)
    assert sorted(trials) == ["rms_norm_linear|h100|float16|M=4|K=128|N=192|gated",
                              "rms_norm_linear|h100|float16|M=4|K=128|N=256|rotary=64/1"]
    for study, done in trials.items():  # every config ran as the runtime would, none of them wrong
        assert [t.state for t in done if t.state != TrialState.PRUNED] == [TrialState.COMPLETE] * 2, study
    out = tmp_path / "h100.json"
    assert nvc("export-table", "--gpu", "h100", "--out", str(out), "--storage", url).exit_code == 0
    forms = {(e["K"], e["N"]): [b.get("epilogue") for b in e["buckets"]]
             for e in json.loads(out.read_text())["kernels"]["rms_norm_linear"]}
    assert forms == {(128, 256): ["rotary=64/1"], (128, 192): ["gated"]}
    # A later plain tune of the QKV shape does not replace the bucket timed in its form.
    assert nvc("tune", "--gpu", "h100", "--shapes", "256x128", "--m", "4", "--trials", "1", "--dtype", "float16",
               "--storage", url).exit_code == 0
    with pytest.warns(UserWarning, match=r"1 newer plain result\(s\) left out .* K=128 N=256 M=4"):
        r = nvc("export-table", "--gpu", "h100", "--out", str(out), "--storage", url)
    assert r.exit_code == 0, r.output
    assert load_table(out).entries[("rms_norm_linear", 128, 256, "float16")][0].epilogue.form == "rotary=64/1"


def test_list_shapes():
    r = nvc("list-shapes")
    assert r.exit_code == 0 and "llama-7b" in r.stdout and "qkv 12288x4096 (rotary=128/32)" in r.stdout
    assert "linear: o_proj 4096x4096, down_proj 4096x11008" in r.stdout


def test_tune_the_plain_linear_and_export_both_kernels(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    small = ["--shapes", "96x64", "--m", "1", "--dtype", "float16", "--trials", "3", "--storage", url]
    for kernel in ("linear", "rms_norm_linear"):
        r = nvc("tune", "--gpu", "h100", "--kernel", kernel, *small)
        assert r.exit_code == 0, r.output
    out = tmp_path / "h100.json"
    r = nvc("export-table", "--out", str(out), "--storage", url)
    assert r.exit_code == 0 and "2 tuned (shape, M) entries" in r.stdout, r.output
    table = load_table(out)
    assert {k for k, *_ in table.entries} == {"linear", "rms_norm_linear"}
    assert table.bucket("linear", 64, 96, torch.float16, 1).config.SUMSQ_IN_LOOP == 0


@pytest.fixture(scope="module")
def linear_db(tmp_path_factory) -> str:
    """A database holding only kernel "linear" results of 96x64 (float16, M=1) on an h100."""
    url = f"sqlite:///{tmp_path_factory.mktemp('merge') / 't.db'}"
    r = nvc("tune", "--gpu", "h100", "--kernel", "linear", "--shapes", "96x64", "--m", "1", "--dtype", "float16",
            "--trials", "2", "--storage", url)
    assert r.exit_code == 0, r.output
    return url


def _shipped(gpu: str = "h100") -> dict:
    """A table exported from another database: a fused entry the database lacks and a linear entry it has."""
    kept = tuning_tables.entry(4096, 12288, {1: Config(16, 64, 128, 4, 4, 1, 4)}, "bfloat16")
    replaced = tuning_tables.entry(64, 96, {1: Config(16, 32, 32, 4, 2), 16: Config(16, 32, 32, 4, 2)}, "float16")
    return tuning_tables.table([kept], gpu, linear=[replaced])


def test_export_merge_keeps_the_shipped_buckets_and_replaces_the_tuned_ones(tmp_path, linear_db):
    out = tmp_path / "h100.json"
    tuning_tables.write(_shipped(), out)
    r = nvc("export-table", "--merge", "--out", str(out), "--storage", linear_db)
    assert r.exit_code == 0 and r.stdout.startswith(f"merged into {out}: 3 tuned"), r.output
    table = load_table(out)
    assert table.bucket("rms_norm_linear", 4096, 12288, torch.bfloat16, 1).config == Config(16, 64, 128, 4, 4, 1, 4)
    # The database's M=1 bucket replaced the shipped one; the shipped M=16 bucket the database lacks is kept.
    assert [b.M for b in table.entries[("linear", 64, 96, "float16")]] == [1, 16]
    assert table.bucket("linear", 64, 96, torch.float16, 1).config != Config(16, 32, 32, 4, 2)
    # Without an existing file --merge just writes; without --merge the file is replaced as before.
    fresh = tmp_path / "new.json"
    r = nvc("export-table", "--merge", "--out", str(fresh), "--storage", linear_db)
    assert r.exit_code == 0 and r.stdout.startswith(f"wrote {fresh}: 1 tuned"), r.output
    r = nvc("export-table", "--out", str(out), "--storage", linear_db)
    assert r.exit_code == 0 and r.stdout.startswith(f"wrote {out}: 1 tuned"), r.output
    assert json.loads(out.read_text())["kernels"] == json.loads(fresh.read_text())["kernels"]


@pytest.mark.parametrize("existing, message", [
    (json.dumps(_shipped("h200")), "gpu 'h200', but the results to merge are of 'h100'"),
    ('{"format": "nano-vllm-coconut/lookup-table", ', "not valid JSON"),
    (json.dumps({**_shipped(), "format_version": 2}), "format_version 2"),
])
def test_export_merge_refuses_another_gpu_or_a_bad_table_and_keeps_the_file(tmp_path, linear_db, existing, message):
    out = tmp_path / "h100.json"
    out.write_text(existing)
    r = nvc("export-table", "--merge", "--out", str(out), "--storage", linear_db)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code != 0 and len(lines) == 1 and lines[0].startswith(f"Error: lookup table {out}: "), r.stderr
    assert message in lines[0] and out.read_text() == existing
    assert not out.with_name(out.name + ".tmp").exists()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("args, message", [
    (["tune", "--gpu", "h100", "--shapes", "llama-9b"], "--shapes: 'llama-9b' is not a preset"),
    (["tune", "--gpu", "h100", "--shapes", "12288x"], "--shapes: '12288x' is not a preset"),
    (["tune", "--gpu", "h100", "--shapes", "96x64", "--m", "one"], "--m: 'one'"),
    (["tune", "--gpu", "h100", "--shapes", "96x64", "--m", "1,,2"], "--m: '1,,2' is not a comma-separated list"),
    (["tune", "--gpu", "h100", "--shapes", "96x64", "--kernel", "softmax"],
     "--kernel softmax: no such kernel; expected one of rms_norm_linear, linear, attention_decode, attention_prefill"),
    (["tune", "--gpu", "h900", "--shapes", "llama-7b"], "--gpu 'h900': unknown GPU name"),
    (["tune", "--gpu", "a100", "--shapes", "llama-7b"], "--gpu a100: device 0 is"),
    (["tune", "--gpu", "h100", "--shapes", "96x64", "--workers", "3"], "--workers 3: only 1 GPU(s) visible"),
    (["tune", "--gpu", "h100", "--shapes", "96x64", "--trials", "0"], "--trials 0: expected >= 1"),
    (["tune", "--gpu", "h100", "--shapes", "96x64", "--budget", "0"], "--budget 0: expected a positive number of"),
    (["tune", "--gpu", "h100", "--shapes", "96x64", "--budget", "soon"], "--budget soon: expected a positive number"),
    (["tune", "--gpu", "h100", "--shapes", "96x64", "--timeout", "nan"], "--timeout nan: expected a positive number"),
    (["tune", "--gpu", "h100", "--shapes", "96x64", "--storage", "postgresql://nobody@127.0.0.1:1/x"],
     PG_UNREACHABLE),
    # 5 query heads cannot share 2 KV heads: the rotary QKV site is refused before anything is stored.
    (["tune", "--gpu", "h100", "--shapes", "{bad_heads}", "--m", "1"], "N=1152: expected [q; k; v] heads"),
    (["show", "--table", "{corrupt}"], "not valid JSON"),
    (["show", "--table", str(ROOT / "tables/h200.json"), "--gpu", "h100"], "--gpu h100: "),
    (["show", "--gpu", "h100", "--storage", "sqlite:///{absent}"], "no database file"),
    (["export-table", "--gpu", "l4"], "no finished tuning results"),
    # click's own refusals too: one line, not its usage, a hint and the error.
    (["tune", "--gpu", "h100", "--shapes", "96x64", "--trials", "many"],
     "Invalid value for '--trials': 'many' is not a valid integer. (see 'main tune --help')"),
    (["tune", "--shapes", "96x64"], "Missing option '--gpu'."),
    (["shwo"], "No such command 'shwo'."),
])
def test_bad_input_is_one_line_and_loses_nothing(tmp_path, args, message):
    db = tmp_path / "keep.db"
    url = f"sqlite:///{db}"
    assert nvc("tune", "--gpu", "h100", *SMALL[:-1], "2", "--m", "1", "--storage", url).exit_code == 0
    before = _digest(db)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": "nano-vllm-coconut/lookup-table", ')
    bad_heads = tmp_path / "config.json"
    bad_heads.write_text(json.dumps(dict(model_type="llama", hidden_size=640, intermediate_size=1024,
                                         num_attention_heads=5, num_key_value_heads=2, vocab_size=1000)))
    args = [a.format(corrupt=corrupt, absent=tmp_path / "absent.db", bad_heads=bad_heads) for a in args]
    if "--storage" not in args and args[0] != "show":
        args += ["--storage", url]
    r = nvc(*args)
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.stderr
    assert _digest(db) == before


def test_two_workers_on_sqlite_partition_the_studies(tmp_path, capfd):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    # Each worker is a spawned process: the FakeHardware travels to it in its pickled Job.
    r = nvc("tune", "--gpu", "h100", "--shapes", "96x64,128x64", "--m", "1,32", "--dtype", "float16", "--trials", "5",
            "--workers", "2", "--storage", url, gpus=2)
    workers_err = capfd.readouterr().err  # what the worker processes wrote, past click's in-process capture
    assert r.exit_code == 0, r.stderr + workers_err
    assert "database is locked" not in r.stderr + workers_err
    studies = counted_trials(url)
    assert len(studies) == 4
    for name, trials in studies.items():
        check_no_trial_lost_or_duplicated(url, name, trials)
        assert sum(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials) == 5
    engine = create_engine(url)
    with Session(engine) as s:
        runs = s.scalars(select(Run)).all()
    # One writer per study: each study has exactly one run, and every run finished.
    assert sorted(r.study_name for r in runs) == sorted(studies) and {r.status for r in runs} == {"finished"}


class _CandidatesFailTimer(FakeTimer):
    def measure(self, workload, repeats):
        if workload.config is not None:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().measure(workload, repeats)


class _CandidatesFailHardware(FakeHardware):
    def timer(self) -> FakeTimer:
        return _CandidatesFailTimer()


def test_a_tune_whose_every_candidate_fails_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    args = ["tune", "--gpu", "h100", "--shapes", "96x64", "--m", "1", "--dtype", "float16", "--trials", "2",
            "--patience", "0", "--storage", url]
    said = ("gpu0: 1 of 1 studies found no correct config, such as rms_norm_linear|h100|float16|M=1|K=64|N=96 "
            "(RuntimeError: CUDA error: an illegal memory access was encountered)")
    r = CliRunner().invoke(main, args, obj=_CandidatesFailHardware())
    assert r.exit_code == 0, r.output
    assert said + "\n" in r.stderr
    assert nvc("show", "--storage", url).stdout == "no finished studies yet\n"
    r = CliRunner().invoke(main, args, obj=_CandidatesFailHardware())  # nothing to search again
    assert r.exit_code == 0 and said + "; 1 of them failed every trial in an earlier run and were not run again " \
                                       "(more --trials search on)\n" in r.stderr, r.output


def test_workers_that_fail_say_why_in_the_one_error_line(tmp_path, capfd):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    # Past what torch.randn takes: each worker's one study cannot make its inputs.
    huge = [str(2**70), str(2**71)]
    r = nvc("tune", "--gpu", "h100", "--shapes", "96x64", "--m", ",".join(huge), "--dtype", "float16", "--trials", "1",
            "--workers", "2", "--storage", url, gpus=2)
    workers_err = capfd.readouterr().err
    assert r.exit_code != 0 and "Traceback" not in r.stderr + workers_err
    lines = r.stderr.strip().splitlines()  # what the tune says it runs, then why it stopped
    why = [re.escape(f"tune-gpu{i} (RuntimeError: rms_norm_linear|h100|float16|M={m}|K=64|N=96: cannot make its "
                     f"inputs or run its baseline (TypeError: ") + r".*?\)\)"  # torch's words vary
           for i, m in enumerate(huge)]
    assert len(lines) == 2 and re.fullmatch(r"Error: tuning worker\(s\) failed: " + ", ".join(why), lines[1]), r.stderr
    # Each run is marked failed, and no trial was started.
    with Session(create_engine(url)) as s:
        assert {r.status for r in s.scalars(select(Run))} == {"failed"}
    assert [len(trials) for trials in counted_trials(url).values()] == [0, 0]


def test_a_budget_tunes_the_most_valuable_studies_first_and_a_rerun_tunes_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(tuner, "MIN_STUDY_S", 1.0)
    url = f"sqlite:///{tmp_path / 'b.db'}"
    args = ["tune", "--gpu", "h100", "--shapes", "96x64,128x64", "--m", "1,128", "--dtype", "float16", "--storage", url]
    # Each study would run its whole 3 s timeout: two fit in 7 s, and a third would get less than MIN_STUDY_S. A
    # study's set-up beyond its timeout (up to 3 s, on a loaded machine) still leaves the second its MIN_STUDY_S.
    started = time.monotonic()
    r = nvc(*args, "--trials", "1000", "--patience", "0", "--timeout", "3", "--budget", "7")
    assert r.exit_code == 0, r.output
    assert time.monotonic() - started < 7 + 5
    assert "gpu0: --budget spent: 2 of 4 studies not started; a rerun with more --budget tunes them" in r.stderr
    with Session(create_engine(url)) as s:
        runs = s.scalars(select(Run).order_by(Run.id)).all()
    # Decode size first, the larger weight first.
    assert [(r.study_name.split("|", 3)[-1], r.status) for r in runs] == [("M=1|K=64|N=128", "finished"),
                                                                          ("M=1|K=64|N=96", "finished")]
    assert runs[0].timeout_s == 3 and runs[1].timeout_s <= 3
    # A rerun with budget to spare: the finished studies are kept (each has its 3 trials), the other two tuned.
    r = nvc(*args, "--trials", "3", "--budget", "600")
    assert r.exit_code == 0 and "--budget spent" not in r.stderr, r.output
    studies = counted_trials(url)
    assert len(studies) == 4
    for name, trials in studies.items():
        check_no_trial_lost_or_duplicated(url, name, trials)
    with Session(create_engine(url)) as s:
        assert [r.study_name.split("|", 3)[-1] for r in s.scalars(select(Run).order_by(Run.id))][2:] == [
            "M=128|K=64|N=128", "M=128|K=64|N=96"]


@pytest.mark.parametrize("compile_processes", [0, 2])
def test_ctrl_c_keeps_every_finished_trial(tmp_path, compile_processes):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    marker = f"NVC_TEST_CTRL_C={tmp_path.name}"  # inherited by every process the tune starts
    # A real SIGINT needs a process of its own; with compile processes as on a GPU (whose ptxas children a terminal's
    # Ctrl-C killed mid-compile, and Triton printed the PTX).
    proc = fake_cli_process("tune", "--gpu", "h100", "--shapes", "96x64", "--m", "4", "--dtype", "float16",
                            "--trials", "400", "--patience", "0", "--storage", url,
                            env={"NVC_FAKE_COMPILE_PROCESSES": str(compile_processes), **dict([marker.split("=")])})
    engine = create_engine(url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            with Session(engine) as s:
                if s.scalar(select(func.count()).select_from(Measurement)) >= 5:
                    break
        except Exception:  # noqa: BLE001 - the tables may not exist yet
            continue
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    # The tune's first line, its progress bar, and the one line the Ctrl-C prints: nothing from the compile pool.
    header, *bar, last = err.rstrip("\n").split("\n")
    assert header.startswith("tuning 1 studies"), err
    assert all(line.strip("\r").startswith("gpu0: ") for line in bar if line.strip()), err
    assert last == "interrupted: finished trials are stored; rerun the same command to resume" and out == ""
    deadline = time.monotonic() + 30  # nothing the tune started outlives it
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_with(marker)
    (name, trials), = counted_trials(url).items()
    check_no_trial_lost_or_duplicated(url, name, trials, interrupted=True)
    with Session(engine) as s:
        assert s.scalars(select(Run.status)).all() == ["interrupted"]


@pytest.mark.postgres
def test_two_processes_share_one_study_on_postgresql(pg_url):
    args = ["tune", "--gpu", "h100", "--shapes", "96x64", "--m", "16", "--dtype", "float16", "--trials", "16",
            "--patience", "0", "--storage", pg_url]
    # Both start on an empty database: they race on creating the schema, then on the study.
    procs = [fake_cli_process(*args) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    (name, trials), = counted_trials(pg_url).items()
    check_no_trial_lost_or_duplicated(pg_url, name, trials)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    # Both workers stop asking once finished + running trials reach the budget; each may hold a few asked ahead.
    assert 16 <= len(done) <= 16 + 2 * 8
    engine = create_engine(resolve_url(pg_url))
    with Session(engine) as s:
        runs = s.scalars(select(Run)).all()
        writers = s.execute(select(Measurement.run_id).where(Measurement.phase == "search").distinct()).all()
    engine.dispose()
    assert len(runs) == 2 and {r.status for r in runs} == {"finished"}
    assert len(writers) == 2  # both processes really measured trials of the shared study


def test_tune_tp_tunes_each_ranks_shard(tmp_path):
    # 4 query heads of 32 and 2 KV heads: a rank of 2 holds 2 and 1 (QKV 128 rows) and half of gate/up.
    config, url = tiny_mistral(tmp_path, heads=4, kv_heads=2)
    r = nvc("tune", "--gpu", "h100", "--kernel", "rms_norm_linear", "--shapes", str(config), "--m", "4", "--trials",
            "1", "--dtype", "float16", "--storage", url, "--tp", "2")
    assert r.exit_code == 0, r.output
    assert sorted(counted_trials(url)) == ["rms_norm_linear|h100|float16|M=4|K=128|N=128|rotary=32/1",
                                           "rms_norm_linear|h100|float16|M=4|K=128|N=96|gated"]
    r = nvc("tune", "--gpu", "h100", "--shapes", str(config), "--storage", url, "--tp", "0")
    assert r.exit_code == 2 and "--tp" in r.output
