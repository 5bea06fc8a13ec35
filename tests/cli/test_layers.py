"""The import layers hold (scripts/check_layers.py), and importing the runtime loads none of the tuner's packages or
the extras they need."""
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_layers", ROOT / "scripts" / "check_layers.py")
check_layers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_layers)

# What `LLM()` must not need: the tuner's packages and the [tune] / [dashboard] extras.
NOT_RUNTIME = ("optuna", "sqlalchemy", "pandas", "plotly", "alembic", "click", "autotune", "db", "search_spaces",
               "dashboard", "nvc_cli")


def test_the_project_keeps_its_layers_and_has_no_import_cycle():
    assert check_layers.ROOT == ROOT and len(check_layers.find_modules(ROOT)) > 50
    assert check_layers.check(ROOT) == []
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_layers.py")], capture_output=True, text=True,
                       timeout=60)
    assert (r.returncode, r.stdout) == (0, "")


def test_the_checker_reports_a_layer_violation_and_cycles(tmp_path):
    def write(name: str, text: str) -> None:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    write("kernels/__init__.py", "")
    write("kernels/gemm.py", "def f():\n    from autotune.tuner import Tuner\n")  # inside a function counts too
    write("autotune/__init__.py", "")
    write("autotune/tuner.py", "import kernels.gemm\nfrom . import objective\n")
    write("autotune/objective.py", "from autotune import tuner\n")
    assert check_layers.check(tmp_path) == [
        "kernels/gemm.py:2: kernels imports autotune.tuner (kernels may import no other project package)",
        "import cycle between packages: autotune -> kernels -> autotune",
        "import cycle between modules: autotune.objective -> autotune.tuner -> autotune.objective",
    ]


def test_importing_the_runtime_needs_no_extra():
    # The tuner's packages and the extras transformers never loads are blocked: importing the runtime must not need
    # them. pandas and click: some images' transformers loads them itself, so only what the runtime adds counts.
    blocked = [m for m in NOT_RUNTIME if m not in ("pandas", "click")]
    code = ("import sys\n"
            f"for m in {blocked!r}: sys.modules[m] = None\n"
            "import torch, triton, transformers, transformers.models.llama\n"
            "before = set(sys.modules)\n"
            "import nanovllm, nanovllm.engine.model_runner, nanovllm.utils.random_checkpoint\n"
            "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('pandas', 'click')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_the_checker_reports_an_extra_imported_by_the_runtime(tmp_path):
    (tmp_path / "nanovllm").mkdir()
    (tmp_path / "nanovllm" / "__init__.py").write_text("import pandas as pd\n")
    assert check_layers.check(tmp_path) == [
        "nanovllm/__init__.py:1: nanovllm imports pandas, which only an extra installs"]
    assert check_layers.check(tmp_path / "nowhere") == [
        f"no modules of {', '.join(check_layers.LAYERS)} under {tmp_path / 'nowhere'}"]
