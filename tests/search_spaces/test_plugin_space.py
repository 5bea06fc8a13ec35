"""Plugin search spaces (search_spaces/plugin.py) and the generic config (base.Params), on the worked example
examples/softmax_plugin.py: loaded by module:Class, checked before a tune, and its table entries checked against
its axes."""
import re

import pytest
import torch

from search_spaces import get_space
from search_spaces.base import Params
from search_spaces.plugin import check_table, checked_problems, load_space
from tests.tuning_tables import table
from tuning_table import parse_table

SPEC = "softmax_plugin:SoftmaxSpace"


@pytest.fixture(autouse=True)
def on_path(monkeypatch, tmp_path):
    from tests.cli.test_cli import ROOT
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    (tmp_path / "odd_plugins.py").write_text(
        "from softmax_plugin import SoftmaxSpace\n"
        "class NoBuckets(SoftmaxSpace):\n    bucket_dims = 'rows'\n"
        "class Raising(SoftmaxSpace):\n    def __init__(self):\n        raise RuntimeError('no GPU here')\n"
        "class Unhashable(SoftmaxSpace):\n    def problems(self, shapes, dtype):\n        return [{'rows': 1}]\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_params_are_a_hashable_mapping_of_the_axes():
    a, b = Params({"BLOCK": 64, "num_warps": 4}), Params({"num_warps": 4, "BLOCK": 64})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1 and a != Params({"BLOCK": 128, "num_warps": 4})
    assert a["BLOCK"] == 64 and a.to_dict() == {"BLOCK": 64, "num_warps": 4} and dict(a) == a.to_dict()


def test_a_plugin_is_loaded_by_its_spec_and_named_by_it(device):
    space = get_space(SPEC)
    assert space.name == SPEC and get_space(SPEC) is space and space.bucket_dims == ("rows",)
    [problem] = checked_problems(space, "4x300", "float32")
    feasible = space.feasible(problem, None)
    assert feasible and len(set(feasible)) == len(feasible)
    assert all(space.violation(c, problem, None) is None for c in feasible)
    x = space.make_inputs(problem, device, copies=1)[0]
    torch.testing.assert_close(space.launcher(feasible[-1])(x), space.launcher(None)(x))


@pytest.mark.parametrize("spec, says", [
    ("odd_plugins:NoBuckets", "bucket_dims 'rows': expected a non-empty tuple of dim names"),
    ("odd_plugins:Raising", "Raising() raised RuntimeError: no GPU here"),
    ("a" * 60 + ":Space", "characters; the database keeps kernel names of up to 64"),
])
def test_a_plugin_that_cannot_be_used_is_one_line(spec, says):
    with pytest.raises(ValueError, match=f"^--kernel {re.escape(spec)}: .*{re.escape(says)}"):
        load_space(spec)


def test_problems_are_checked_before_a_tune():
    with pytest.raises(ValueError, match=r"--shapes: '4x'"):
        checked_problems(get_space(SPEC), "4x", "float16")
    with pytest.raises(ValueError, match=r"odd_plugins:Unhashable: problem \{'rows': 1\}: AttributeError"):
        checked_problems(load_space("odd_plugins:Unhashable"), "1x1", "float16")


def test_table_configs_must_name_the_spaces_axes():
    data = table([])
    config = {"BLOCK": 128, "ROWS": 1, "num_warps": 4, "num_stages": 2}
    data["kernels"][SPEC] = [{"dims": {"cols": 300}, "dtype": "float16", "buckets": [
        {"bucket": {"rows": 4}, "config": config, "latency_us": 1.0, "spread_us": 0.0, "baseline_us": 1.0,
         "speedup": 1.0}]}]
    check_table(parse_table(data))
    config.pop("ROWS")
    with pytest.raises(ValueError, match="config fields BLOCK, num_stages, num_warps; the space's axes are BLOCK, "
                                         "ROWS, num_stages, num_warps"):
        check_table(parse_table(data))
    data["kernels"]["not_installed_anywhere:Space"] = data["kernels"].pop(SPEC)
    check_table(parse_table(data))  # its module is not importable here: the structural check alone
