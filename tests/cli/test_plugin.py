"""A search space from a module outside the project (examples/softmax_plugin.py, put on the path as a user's module
would be) through the whole command line on FakeHardware: tune -> database -> export-table -> the table entry read
back by the runtime's API and run -> show and the dashboard; and plugins that cannot load refused in one line,
before anything is stored."""
import hashlib
import sys
from pathlib import Path

import pytest
import torch

from db.queries import best_results
from db.storage import open_engine
from tests.cli.test_cli import ROOT, nvc
from tuning_table import load_table

SPEC = "softmax_plugin:SoftmaxSpace"


@pytest.fixture
def on_path(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples"))


def test_a_plugin_tunes_exports_and_runs_from_its_table(on_path, tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    r = nvc("tune", "--gpu", "h100", "--kernel", SPEC, "--shapes", "2x100,8x100,3x40", "--dtype", "float32",
            "--trials", "3", "--storage", url)
    assert r.exit_code == 0, r.output
    assert "tuning 3 studies of softmax_plugin:SoftmaxSpace" in r.output
    best = best_results(open_engine(url, create=False))
    assert sorted(best["study_name"]) == [f"{SPEC}|h100|float32|rows={r}|cols={c}" for r, c in
                                          [(2, 100), (3, 40), (8, 100)]]
    shown = nvc("show", "--storage", url)
    assert shown.exit_code == 0 and SPEC in shown.stdout and "cols=100 rows=8" in shown.stdout

    out = tmp_path / "h100.json"
    r = nvc("export-table", "--out", str(out), "--storage", url)
    assert r.exit_code == 0, r.output
    table = load_table(out)
    assert table.bucket_dims[SPEC] == ("rows",)
    # 5 rows of 100: the smallest tuned bucket >= 5 is 8; 50 rows: the largest, 8 too; 40 columns: its own entry.
    eight = best.loc[best["study_name"].str.contains("rows=8"), "config"].item()
    for rows, cols, want in [(5, 100, eight), (50, 100, eight), (1, 40, None)]:
        bucket = table.lookup(SPEC, {"rows": rows, "cols": cols}, torch.float32)
        assert bucket.config == (want or bucket.config) and set(bucket.config) == {"BLOCK", "ROWS", "num_warps",
                                                                                   "num_stages"}
    assert table.lookup(SPEC, {"rows": 5, "cols": 64}, torch.float32) is None
    import softmax_plugin
    x = torch.randn(5, 100)
    torch.testing.assert_close(softmax_plugin.softmax(x, table), torch.softmax(x, dim=-1))
    assert nvc("show", "--table", str(out)).stdout.count(SPEC) == 3

    html = tmp_path / "d.html"
    r = nvc("dashboard", "--storage", url, "--out", str(html))
    assert r.exit_code == 0, r.output
    page = html.read_text()
    assert f"{SPEC}|h100|float32|rows=8|cols=100" in page and "cols=100 rows=8" in page  # studies, exported table


BROKEN = '''
from softmax_plugin import SoftmaxSpace

class NotASpace:
    pass

class RaisingAxes(SoftmaxSpace):
    def axes(self, problem):
        raise KeyError("BLOCK")
'''


@pytest.mark.parametrize("spec, says", [
    ("no_such_plugin_module:Space", "cannot import no_such_plugin_module (ModuleNotFoundError"),
    ("broken_plugin:Missing", "module broken_plugin has no attribute Missing"),
    ("broken_plugin:NotASpace", "NotASpace is not a subclass of search_spaces.base.SearchSpace"),
    ("broken_plugin:RaisingAxes", "axes(SoftmaxProblem(rows=2, cols=100, dtype='bfloat16')) raised KeyError: 'BLOCK'"),
    ("not a spec:", "expected a registered kernel or package.module:SpaceClass"),
])
def test_a_broken_plugin_is_one_line_naming_it_and_nothing_stored(on_path, tmp_path, monkeypatch, spec, says):
    (tmp_path / "broken_plugin.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    db = tmp_path / "t.db"
    open_engine(f"sqlite:///{db}").dispose()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    r = nvc("tune", "--gpu", "h100", "--kernel", spec, "--shapes", "2x100", "--storage", f"sqlite:///{db}")
    assert r.exit_code != 0
    assert r.output.strip().splitlines() == [f"Error: --kernel {spec}: " + r.output.split(": ", 2)[2].strip()]
    assert says in r.output
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    sys.modules.pop("broken_plugin", None)
