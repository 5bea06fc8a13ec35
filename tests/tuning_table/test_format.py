"""The lookup table the runtime reads: round trip, bucket rule, dtype key, clear errors when malformed, merging."""
import copy
import json
import warnings

import pandas as pd
import pytest
import torch

from tuning_table import check_gpu_arg, normalize_gpu_name
from autotune.export import build_table, merge_tables
from tuning_table.format import FORMAT, FORMAT_VERSION, load_table, parse_table, write_table
from kernels.config import Config

C1 = Config(16, 64, 128, 4, 4, 1, 4).to_dict()
C64 = Config(64, 128, 64, 4, 4, 8, 1).to_dict()
C4K = Config(128, 128, 64, 8, 3, 8, 1).to_dict()



def config_of(table, kernel, K, N, dtype, M):
    """The config the bucket rule picks, or None for an untuned (K, N, dtype)."""
    bucket = table.bucket(kernel, K, N, dtype, M)
    return bucket.config if bucket is not None else None


def bucket(M, config, **form):
    return dict(M=M, config=config, latency_us=10.0, spread_us=0.1, baseline_us=13.0, speedup=1.3, **form)


TABLE = {
    "format": FORMAT, "format_version": FORMAT_VERSION, "gpu": "h100", "gpu_name": "NVIDIA H100 80GB HBM3",
    "torch": "2.11.0", "triton": "3.6.0", "created": "2026-11-27T00:00:00+00:00",
    "kernels": {"rms_norm_linear": [
        {"K": 4096, "N": 12288, "dtype": "bfloat16", "buckets": [bucket(64, C64), bucket(1, C1), bucket(4096, C4K)]},
        {"K": 4096, "N": 12288, "dtype": "float16", "buckets": [bucket(1, C4K)]},
    ]},
}


def test_round_trip_and_bucket_rule(tmp_path):
    path = tmp_path / "h100.json"
    write_table(TABLE, path)
    table = load_table(path)
    assert (table.gpu, table.torch, table.triton) == ("h100", "2.11.0", "3.6.0")
    look = lambda M: config_of(table, "rms_norm_linear", 4096, 12288, torch.bfloat16, M)  # noqa: E731
    # The smallest tuned bucket >= M, else the largest.
    assert look(1) == Config.from_dict(C1)
    assert look(2) == look(64) == Config.from_dict(C64)
    assert look(65) == look(4096) == look(100_000) == Config.from_dict(C4K)
    assert config_of(table, "rms_norm_linear", 4096, 12288, "float16", 1) == Config.from_dict(C4K)
    assert config_of(table, "rms_norm_linear", 4096, 12288, torch.float32, 1) is None
    assert config_of(table, "rms_norm_linear", 4096, 4096, torch.bfloat16, 1) is None


def _broken(edit):
    t = copy.deepcopy(TABLE)
    edit(t)
    return t


@pytest.mark.parametrize("table, match", [
    ([], "JSON object"),
    (_broken(lambda t: t.update(format_version=2)), "format_version 2"),
    (_broken(lambda t: t.update(format="other")), "'format' is 'other'"),
    ({}, "no 'format' field: not a lookup table"),
    (_broken(lambda t: t.pop("triton")), "missing field.s. triton"),
    (_broken(lambda t: t["kernels"]["rms_norm_linear"][0].update(dtype="int8")),
     r"kernels.rms_norm_linear\[0\].dtype: expected one of .*, got 'int8'"),
    (_broken(lambda t: t["kernels"]["rms_norm_linear"][0].update(buckets=[])),
     r"kernels.rms_norm_linear\[0\].buckets: expected a non-empty list"),
    (_broken(lambda t: t["kernels"]["rms_norm_linear"][0]["buckets"][0].pop("speedup")),
     r"kernels.rms_norm_linear\[0\].buckets\[0\]: missing field.s. speedup"),
    (_broken(lambda t: t["kernels"]["rms_norm_linear"][0]["buckets"][0].update(speedup="fast")),
     r"buckets\[0\].speedup: expected a finite positive number, got 'fast'"),
    (_broken(lambda t: t["kernels"]["rms_norm_linear"][0]["buckets"][0]["config"].update(BLOCK_M=24)),
     r"buckets\[0\].config: Config.BLOCK_M=24"),
    (_broken(lambda t: t["kernels"]["rms_norm_linear"][0]["buckets"][0]["config"].update(COLOR=1)), "unknown field"),
    (_broken(lambda t: t["kernels"]["rms_norm_linear"][1].update(dtype="bfloat16")), "appears twice"),
    (_broken(lambda t: t["kernels"]["rms_norm_linear"][0]["buckets"][0].update(epilogue="rotary")),
     r"buckets\[0\].epilogue: epilogue 'rotary': expected '', 'gated' or 'rotary=<head_dim>/<kv_heads>'"),
    (_broken(lambda t: t["kernels"]["rms_norm_linear"][0]["buckets"][0].update(epilogue=1)), "epilogue 1"),
])
def test_malformed_tables_name_the_problem(table, match):
    with pytest.raises(ValueError, match=match):
        parse_table(table)


def test_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        load_table(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_table(bad)


def test_write_refuses_an_invalid_table_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "t.json"
    write_table(TABLE, path)
    with pytest.raises(ValueError):
        write_table(_broken(lambda t: t.pop("gpu")), path)
    assert json.loads(path.read_text()) == TABLE


def _fresh(**header):
    """A table as build_table writes it: one linear entry and a new tuning of TABLE's bfloat16 entry."""
    linear = {"K": 4096, "N": 4096, "dtype": "bfloat16", "buckets": [bucket(1, C1)]}  # C1: SUMSQ_IN_LOOP 0
    fused = {"K": 4096, "N": 12288, "dtype": "bfloat16", "buckets": [bucket(16, C64)]}
    return {**TABLE, "torch": "2.13.0", "created": "2026-12-01T00:00:00+00:00", **header,
            "kernels": {"linear": [linear], "rms_norm_linear": [fused]}}


def test_merge_keeps_the_old_buckets_and_replaces_the_retuned_ones():
    old, new = copy.deepcopy(TABLE), _fresh()
    mixed = r"torch 2.11.0, triton 3.6.0 \(existing table\) and torch 2.13.0.* names the newest \(torch 2.13.0"
    with pytest.warns(UserWarning, match=mixed):
        merged = merge_tables(old, new)
    assert old == TABLE  # the inputs are not modified
    table = parse_table(merged)
    # only in the old table: kept
    assert config_of(table, "rms_norm_linear", 4096, 12288, "float16", 1) == Config.from_dict(C4K)
    # The re-tuned entry gains the new M=16 bucket and keeps its other buckets.
    assert [b.M for b in table.entries[("rms_norm_linear", 4096, 12288, "bfloat16")]] == [1, 16, 64, 4096]
    assert config_of(table, "rms_norm_linear", 4096, 12288, "bfloat16", 16) == Config.from_dict(C64)
    retuned = merge_tables(TABLE, {**_fresh(), "kernels": {"rms_norm_linear": [
        {"K": 4096, "N": 12288, "dtype": "bfloat16", "buckets": [bucket(64, C1)]}]}})
    # the database wins
    assert config_of(parse_table(retuned), "rms_norm_linear", 4096, 12288, "bfloat16", 64) == Config.from_dict(C1)
    assert config_of(table, "linear", 4096, 4096, "bfloat16", 1).SPLIT_K == 4  # only in the new table
    assert (merged["torch"], merged["created"]) == ("2.13.0", "2026-12-01T00:00:00+00:00")
    # An old table created later names the header; with equal versions nothing is said.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merged = merge_tables(TABLE, _fresh(torch="2.11.0", created="2026-11-01T00:00:00"))
    assert merged["created"] == TABLE["created"]
    # Another card with the same short name (PCIe vs SXM) merges, with a word.
    with pytest.warns(UserWarning, match="tuned on 'NVIDIA H100 80GB HBM3', the results to merge on 'NVIDIA H100 PCIe'"):
        merge_tables(TABLE, _fresh(torch="2.11.0", gpu_name="NVIDIA H100 PCIe"))


def test_a_bucket_timed_in_its_form_outranks_a_plain_one_when_merging():
    key = ("rms_norm_linear", 4096, 12288, "bfloat16")
    old = _broken(lambda t: t["kernels"]["rms_norm_linear"][0]["buckets"][0].update(epilogue="rotary=128/32"))
    assert [b.epilogue.form for b in parse_table(old).entries[key]] == ["", "rotary=128/32", ""]  # M = 1, 64, 4096
    plain = {**_fresh(torch="2.11.0"), "kernels": {"rms_norm_linear": [
        {"K": 4096, "N": 12288, "dtype": "bfloat16", "buckets": [bucket(1, C4K), bucket(64, C1)]}]}}
    with pytest.warns(UserWarning, match=r"kept 1 bucket\(s\) timed in the runtime's form over the database's plain "
                                         r"results \(first: rms_norm_linear K=4096 N=12288 M=64\)"):
        merged = parse_table(merge_tables(old, plain))
    assert [(b.M, b.config, b.epilogue.form) for b in merged.entries[key]] == [
        (1, Config.from_dict(C4K), ""), (64, Config.from_dict(C64), "rotary=128/32"), (4096, Config.from_dict(C4K), "")]
    formed = copy.deepcopy(plain)
    formed["kernels"]["rms_norm_linear"][0]["buckets"][1]["epilogue"] = "rotary=128/32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merged = parse_table(merge_tables(old, formed))
    # a form result replaces the old one
    assert config_of(merged, "rms_norm_linear", 4096, 12288, "bfloat16", 64) == Config.from_dict(C1)


def _result(M, config, finished, epilogue=""):
    """One db.queries.best_results row."""
    form = f"|{epilogue}" if epilogue else ""
    return dict(gpu="h100", gpu_id=1, gpu_name="NVIDIA H100 80GB HBM3", torch="2.11.0", triton="3.6.0",
                kernel="rms_norm_linear", dtype="bfloat16", K=4096, N=12288, M=M, config=config, median_us=10.0,
                spread_us=0.1, baseline_us=13.0, speedup=1.3, tflops=1.0, gbps=1.0,
                finished_at=pd.Timestamp(finished), form=epilogue,
                study_name=f"rms_norm_linear|h100|bfloat16|M={M}|K=4096|N=12288{form}")


def test_export_prefers_a_result_timed_in_its_form_over_a_newer_plain_one():
    best = pd.DataFrame([_result(16, C64, "2026-11-01", "rotary=128/32"), _result(16, C1, "2026-11-02"),
                         _result(1, C4K, "2026-11-01"), _result(1, C1, "2026-11-02")])
    with pytest.warns(UserWarning, match=r"1 newer plain result\(s\) left out for ones timed in the runtime's form \(first: "
                                         r"rms_norm_linear K=4096 N=12288 M=16, study '.*\|N=12288'\)"):
        table = build_table(best)
    buckets = table["kernels"]["rms_norm_linear"][0]["buckets"]
    assert [(b["M"], b["config"], b.get("epilogue")) for b in buckets] == [(1, C1, None), (16, C64, "rotary=128/32")]
    assert parse_table(table).entries[("rms_norm_linear", 4096, 12288, "bfloat16")][1].epilogue.form == "rotary=128/32"
    # An older plain result is not worth a word; between two form results the newer wins.
    best = pd.DataFrame([_result(16, C1, "2026-11-01"), _result(16, C64, "2026-11-02", "rotary=128/32"),
                         _result(16, C4K, "2026-11-03", "rotary=128/8")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = build_table(best)
    assert [(b["config"], b["epilogue"]) for b in table["kernels"]["rms_norm_linear"][0]["buckets"]] == [
        (C4K, "rotary=128/8")]


@pytest.mark.parametrize("old, match", [
    (_broken(lambda t: t.update(gpu="h200")), "existing table: gpu 'h200', but the results to merge are of 'h100'"),
    (_broken(lambda t: t["kernels"]["rms_norm_linear"][0].pop("K")), r"existing table: kernels.rms_norm_linear\[0\]"),
    (_broken(lambda t: t.update(created="yesterday")),
     "existing table: created: expected an ISO 8601 time, got 'yesterday'"),
    ([], "existing table: expected a JSON object"),
])
def test_merge_refuses_another_gpu_and_malformed_tables(old, match):
    with pytest.raises(ValueError, match=match):
        merge_tables(old, _fresh())


@pytest.mark.parametrize("name, short", [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H100 PCIe", "h100"), ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA L4", "l4"), ("NVIDIA L40S", "l40s"),
    ("NVIDIA GeForce RTX 4090", "rtx4090"), ("NVIDIA A10G", "a10g"), ("Tesla T4", "t4"),
])
def test_gpu_names_normalize(name, short):
    assert normalize_gpu_name(name) == short
    assert check_gpu_arg(short.upper()) == short


def test_unknown_gpu_names():
    with pytest.raises(ValueError, match="not a known device"):
        normalize_gpu_name("Some Accelerator 9000")
    with pytest.raises(ValueError, match="--gpu 'h900': unknown GPU name"):
        check_gpu_arg("h900")
