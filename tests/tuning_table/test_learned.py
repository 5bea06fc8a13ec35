"""The learned fallback (tuning_table/learned.py): nearest tuned bucket, feasible here, else the default config."""
import dataclasses
import re

import pytest
import torch

from kernels.config import Config, default_config
from kernels.epilogue import GATED, PLAIN, rotary
from tests.tuning_tables import entry, table, write
from tuning_table import learned, load_table, parse_table, select, select_configs, shipped_table
from tuning_table.learned import Point, Rule, folder_points, shipped_points, table_points

CPU = torch.device("cpu")
DECODE = Config(16, 64, 256, num_warps=4, num_stages=4, GROUP_M=1)
WIDE = Config(16, 128, 128, num_warps=4, num_stages=3, GROUP_M=1)
PREFILL = Config(128, 256, 64, num_warps=8, num_stages=3, GROUP_M=8)


def synthetic() -> Rule:
    """Two fused shapes (a small and a wide weight) at decode, one at prefill, and a plain linear."""
    data = table([entry(1024, 4096, {1: DECODE, 16: DECODE}, dtype="bfloat16"),
                  entry(4096, 32000, {1: WIDE, 16: WIDE, 4096: PREFILL}, dtype="bfloat16")],
                 linear=[entry(4096, 4096, {1: dataclasses.replace(DECODE, SPLIT_K=2)}, dtype="bfloat16")])
    return Rule(table_points(parse_table(data)))


def test_the_nearest_bucket_of_the_same_kernel_gives_the_config():
    rule = synthetic()
    assert rule.predict("rms_norm_linear", 1, 1024, 6144, PLAIN, CPU) == DECODE  # the small weight's neighbour
    assert rule.predict("rms_norm_linear", 8, 4096, 28672, PLAIN, CPU) == WIDE  # the wide one's, M 16 nearest
    assert rule.predict("rms_norm_linear", 8192, 4096, 22016, PLAIN, CPU) == PREFILL
    assert rule.predict("linear", 2, 4096, 4096, PLAIN, CPU).SPLIT_K == 2  # never another kernel's point


def test_ties_go_to_the_smaller_m_whatever_the_order():
    points = [Point("h200", "rms_norm_linear", 8, 4096, 4096, "plain", WIDE),
              Point("h200", "rms_norm_linear", 2, 4096, 4096, "plain", DECODE)]
    for order in (points, points[::-1]):
        (d, nearest), (d2, _) = Rule(order).ranked("rms_norm_linear", 4, 4096, 4096)
        assert nearest.M == 2 and d == d2 == pytest.approx(1.0)


def test_a_tile_of_fewer_rows_shares_the_weight_through_l2():
    rule = Rule([Point("h200", "rms_norm_linear", 32, 4096, 12288, "plain", dataclasses.replace(WIDE, BLOCK_M=32))])
    assert rule.predict("rms_norm_linear", 64, 4096, 12288, PLAIN, CPU) == dataclasses.replace(WIDE, BLOCK_M=32,
                                                                                                GROUP_M=8)
    assert rule.predict("rms_norm_linear", 32, 4096, 12288, PLAIN, CPU).GROUP_M == 1  # as tuned for its own M
    assert rule.predict("rms_norm_linear", 17, 4096, 12288, PLAIN, CPU).GROUP_M == 1  # a taller point: one row block


def test_nothing_near_in_m_predicts_nothing_and_the_runtime_runs_the_default(monkeypatch):
    rule = synthetic()
    assert rule.predict("rms_norm_linear", 256, 1024, 4096, PLAIN, CPU) is None  # 16 and 4096 are 4 octaves away
    assert Rule([]).predict("rms_norm_linear", 1, 1024, 4096, PLAIN, CPU) is None
    monkeypatch.setattr(select, "shipped_rule", lambda t: Rule([]))
    launches = select_configs(None, "rms_norm_linear", 64, 256, torch.float32, PLAIN, CPU, 4)
    assert [launch.config for launch in launches[1:]] == [default_config(m, 256, 64, CPU, 4) for m in range(1, 5)]


def test_the_epilogue_kind_is_a_feature():
    gated = Config(16, 32, 256, num_warps=2, num_stages=4, GROUP_M=1)
    points = [Point("h200", "rms_norm_linear", 1, 4096, 22016, "plain", DECODE),
              Point("h200", "rms_norm_linear", 1, 4096, 28672, "gated", gated)]
    rule = Rule(points)
    assert rule.predict("rms_norm_linear", 1, 4096, 22016, PLAIN, CPU) == DECODE
    # 0.38 octaves of N away, but timed in the site's form: nearer than the plain result of the same shape.
    assert rule.predict("rms_norm_linear", 1, 4096, 22016, GATED, CPU) == gated


def test_holding_out_drops_every_point_of_the_shapes():
    rule = synthetic()
    held = rule.holding_out([("rms_norm_linear", 1024, 4096)])
    assert len(held.points) == len(rule.points) - 2
    assert all((p.K, p.N) != (1024, 4096) for p in held.points if p.kernel == "rms_norm_linear")
    assert held.predict("rms_norm_linear", 1, 1024, 4096, PLAIN, CPU) == WIDE  # the other shape's, now nearest
    assert len(rule.holding_out([("linear", 1024, 4096)]).points) == len(rule.points)  # kernels are apart


def test_configs_this_device_cannot_run_are_skipped_for_the_next(monkeypatch):
    tma = Config(16, 64, 128, num_warps=4, num_stages=4, GROUP_M=1, TMA=1)
    deep = Config(16, 256, 256, num_warps=4, num_stages=5, GROUP_M=1)  # 5 x 272 x 256 x 2 B = 680 KiB
    points = [Point("h200", "rms_norm_linear", 1, 4096, 12288, "plain", c) for c in (tma, deep)] + \
             [Point("h200", "rms_norm_linear", 2, 4096, 12288, "plain", DECODE)]
    rule = Rule(points)
    assert rule.predict("rms_norm_linear", 1, 4096, 12288, PLAIN, CPU) == tma  # the interpreter runs TMA
    assert rule.predict("rms_norm_linear", 1, 4096, 12290, PLAIN, CPU) == deep  # rows not 16-byte aligned
    monkeypatch.setattr(learned, "device_has_tma", lambda device: False)
    assert rule.predict("rms_norm_linear", 1, 4096, 12288, PLAIN, CPU) == deep
    monkeypatch.setattr(learned, "device_smem_limit", lambda device: 227 * 1024)
    assert rule.predict("rms_norm_linear", 1, 4096, 12288, PLAIN, CPU) == DECODE
    split = dataclasses.replace(DECODE, BLOCK_K=64, SPLIT_K=8)
    assert Rule([Point("h200", "rms_norm_linear", 1, 4096, 4096, "plain", split)]).predict(
        "rms_norm_linear", 1, 256, 4096, PLAIN, CPU) is None  # 8 splits of 4 K blocks


def test_a_rotary_site_takes_configs_whose_form_fits_or_runs_them_plain():
    narrow = Config(16, 64, 128, num_warps=4, num_stages=4, GROUP_M=1)
    rule = Rule([Point("h200", "rms_norm_linear", 1, 4096, 12288, "plain", narrow)])
    # head_dim 16: no 32-column rotary tile fits, so the site runs the plain kernel and the separate rotary one.
    assert rule.predict("rms_norm_linear", 1, 4096, 12288, rotary(16, 32), CPU) == narrow


def test_the_running_cards_points_come_first():
    a100 = dataclasses.replace(DECODE, num_warps=8)
    rule = Rule([Point("h200", "rms_norm_linear", 1, 4096, 12288, "plain", DECODE),
                 Point("a100", "rms_norm_linear", 1, 1024, 4096, "plain", a100)])
    assert [p.gpu for _, p in rule.ranked("rms_norm_linear", 1, 4096, 12288, gpu="a100")] == ["a100"]
    # No table of this card: every point, nearest first.
    assert [p.gpu for _, p in rule.ranked("rms_norm_linear", 1, 4096, 12288, gpu="l4")] == ["h200", "a100"]
    assert [p.gpu for _, p in rule.ranked("rms_norm_linear", 1, 4096, 12288)] == ["h200", "a100"]


def test_bad_sizes_are_refused_and_an_unknown_kernel_has_no_points():
    assert synthetic().ranked("softmax_plugin:SoftmaxSpace", 1, 64, 64) == []  # a kernel no table keys by K, N
    with pytest.raises(ValueError, match="M=0: expected an int >= 1"):
        synthetic().ranked("rms_norm_linear", 0, 64, 64)


def test_the_tables_of_a_folder_are_its_points_and_a_bad_one_is_named(tmp_path):
    write(table([entry(1024, 4096, {1: DECODE, 16: WIDE}, dtype="bfloat16")], gpu="h200"), tmp_path / "h200.json")
    points = folder_points(tmp_path)
    assert [(p.gpu, p.M, p.config) for p in points] == [("h200", 1, DECODE), ("h200", 16, WIDE)]
    assert folder_points(tmp_path / "missing") == []
    (tmp_path / "a100.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"lookup table {re.escape(str(tmp_path / 'a100.json'))}: not valid JSON"):
        folder_points(tmp_path)
    (tmp_path / "a100.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match=rf"lookup table {re.escape(str(tmp_path / 'a100.json'))}: 'format'"):
        folder_points(tmp_path)


def test_the_shipped_tables_are_the_shipped_rules_points():
    shipped = load_table(shipped_table("h200"))
    assert len(shipped_points()) == len(table_points(shipped)) > 0
    assert {p.kernel for p in shipped_points()} == {"rms_norm_linear", "linear"}
    # A shape the shipped table tuned predicts its own bucket's config.
    (kernel, K, N, _), buckets = next(iter(shipped.entries.items()))
    rule = learned.shipped_rule()
    assert rule.predict(kernel, buckets[0].M, K, N, buckets[0].epilogue, CPU) == buckets[0].config


def test_the_runtime_predicts_untuned_shapes_from_the_table_in_use_too(tmp_path, monkeypatch):
    monkeypatch.setattr(learned, "shipped_points", lambda: ())
    t = load_table(write(table([entry(64, 256, {1: DECODE, 16: WIDE})]), tmp_path / "t.json"))
    launches = select_configs(t, "rms_norm_linear", 64, 512, torch.float32, PLAIN, CPU, 20)
    configs = [launch.config if launch else None for launch in launches]
    assert configs[1] == configs[2] == DECODE and configs[8] == configs[16] == WIDE
    # M 3..7 lie more than an octave from both buckets: nothing near was tuned, the default runs.
    assert configs[3] == default_config(3, 512, 64, CPU, 4) and configs[7] == default_config(7, 512, 64, CPU, 4)
    assert configs[17:] == [None] * 4  # past untuned_max_m, the separate path as before


def test_on_a_small_card_without_tma_every_predicted_launch_runs(monkeypatch):
    # A T4-like card: 64 KiB of shared memory a block, no TMA. The shipped H200 points that fit, else the default.
    for module in (learned, select):
        monkeypatch.setattr(module, "device_smem_limit", lambda device: 64 * 1024)
        monkeypatch.setattr(module, "device_has_tma", lambda device: False)
    for K, N, epilogue in ((4096, 12288, rotary(128, 32)), (5120, 27648, GATED), (2048, 3072, PLAIN)):
        launches = select_configs(None, "rms_norm_linear", K, N, torch.bfloat16, epilogue, CPU, 16)
        for launch in launches[1:]:
            assert launch.config.smem_bytes(2) <= 64 * 1024 and not launch.config.TMA
    assert launches[1].config in {p.config for p in shipped_points()}  # a tuned config that fits, not the default
