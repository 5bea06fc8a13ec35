"""The distribution: the wheel carries the packages, the shipped tables where the runtime reads them and the database
migrations, and nothing of the checkout's tests or root scripts; the `nvc` command runs. A CPU test (seconds)."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("autotune", "dashboard", "db", "kernels", "nanovllm", "nvc_cli", "search_spaces", "tuning_table")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy: setuptools writes build/ and *.egg-info next to the source, and a stale build/lib of the
    # checkout would slip deleted modules into the wheel.
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".cache", "*.db"))
    # No build isolation: the installed setuptools builds it offline, in seconds.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp, src],
                   check=True, capture_output=True, timeout=120)
    (path,) = tmp.glob("nano_vllm_coconut-*.whl")
    return path


def test_the_wheel_holds_the_packages_and_the_tables_and_no_checkout_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names if not n.startswith("nano_vllm_coconut-")} == set(PACKAGES)
    assert {f"tuning_table/tables/{p.name}" for p in (ROOT / "tables").glob("*.json")} <= names
    assert "tuning_table/tables/h200.json" in names
    migrations = {p.relative_to(ROOT).as_posix() for p in (ROOT / "db" / "migrations").rglob("*.py")}
    assert migrations and migrations <= names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "nvc = nvc_cli:run" in entry_points


def test_the_runtime_finds_the_shipped_table_inside_the_installed_package(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # From outside the checkout, with the unpacked wheel first on the path (the editable install's finder comes
    # after the path's, so it does not shadow it).
    code = (f"import sys; sys.path.insert(0, {str(site)!r}); from tuning_table import shipped_table; "
            "print(shipped_table('h200'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(site / "tuning_table" / "tables" / "h200.json")


def test_nvc_runs_and_lists_its_commands():
    r = subprocess.run([sys.executable, "-m", "nvc_cli", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    for command in ("tune", "export-table", "show", "list-shapes", "dashboard"):
        assert f"  {command} " in r.stdout


def test_without_the_dashboard_extra_only_dashboard_says_it_is_missing():
    # plotly absent: the [tune] extra alone.
    code = "import sys; sys.modules['plotly'] = None; from nvc_cli.commands import main; main()"
    help_ = subprocess.run([sys.executable, "-c", code, "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert help_.returncode == 0 and "list-shapes" in help_.stdout, help_.stderr
    r = subprocess.run([sys.executable, "-c", code, "dashboard", "--out", "x.html"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["Error: dashboard needs the [dashboard] extra (plotly is not installed): "
                                             "pip install 'nano-vllm-coconut[dashboard]'"]


def test_without_the_tune_extra_the_command_says_what_to_install():
    code = "import sys; sys.modules['optuna'] = None; sys.argv = ['nvc', '--help']; from nvc_cli import run; run()"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["nvc: the command line needs the [tune] extra (optuna not installed): "
                                             "pip install 'nano-vllm-coconut[tune]'"]
