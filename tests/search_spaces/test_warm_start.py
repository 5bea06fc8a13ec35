"""A new study's first warm start is the learned rule's prediction (tuning_table/learned.py), then the heuristics
(the GEMV-like tiles first at decode sizes)."""
import torch

from kernels.config import Config, default_config
from kernels.epilogue import GATED, PLAIN
from search_spaces import Problem, get_space
from search_spaces import rms_norm_linear as space_module
from tuning_table.learned import Point, Rule

CPU = torch.device("cpu")
LEARNED = Config(16, 32, 256, num_warps=2, num_stages=5, GROUP_M=1, SPLIT_K=1)


def test_the_prediction_comes_first_then_the_gemv_tiles_then_the_default(monkeypatch):
    rule = Rule([Point("h200", "rms_norm_linear", 1, 4096, 22016, "gated", LEARNED),
                 Point("h200", "linear", 1, 4096, 4096, "plain", Config(16, 64, 128, GROUP_M=1, SPLIT_K=4))])
    monkeypatch.setattr(space_module, "shipped_rule", lambda: rule)
    problem = Problem(2, 4096, 28672, epilogue=GATED)
    fused = get_space("rms_norm_linear").heuristics(problem, CPU)
    # The GEMV-like tiles next at decode sizes: a study settles a few trials after its best, so they come early.
    gemv = space_module._gemv_picks(problem)
    assert any(c.BLOCK_M < 16 for c in gemv)
    assert fused[0] == LEARNED and fused[1:1 + len(gemv)] == gemv
    assert fused[1 + len(gemv)] == default_config(2, 28672, 4096, CPU)
    # The plain linear asks for its own kernel's points.
    linear = get_space("linear").heuristics(Problem(1, 4096, 5120), CPU)
    assert linear[0] == Config(16, 64, 128, GROUP_M=1, SPLIT_K=4)


def test_nothing_near_leaves_the_heuristics_as_they_were(monkeypatch):
    monkeypatch.setattr(space_module, "shipped_rule", lambda: Rule([]))
    problem = Problem(4096, 4096, 22016, epilogue=PLAIN)
    assert get_space("rms_norm_linear").heuristics(problem, CPU)[0] == default_config(4096, 22016, 4096, CPU)


def test_a_shipped_shape_starts_from_its_shipped_winner():
    from tuning_table import load_table, shipped_table
    table = load_table(shipped_table("h200"))
    (kernel, K, N, _), buckets = next((k, b) for k, b in table.entries.items() if k[0] == "rms_norm_linear")
    b = buckets[0]
    assert get_space(kernel).heuristics(Problem(b.M, K, N, epilogue=b.epilogue), CPU)[0] == b.config
