"""A generic kernel's (a plugin's, or later attention's) table entries: named dims, buckets over one or several dims,
the bucket rule dim by dim, the structural strictness of a file read without its space, and --merge."""
import copy
import math

import pandas as pd
import pytest

from autotune.export import build_table, merge_tables
from tests.tuning_tables import table
from tuning_table import parse_table, write_table, load_table

KERNEL = "my_kernels.attention:DecodeSpace"


def bucket(batch: int, context: int, block: int) -> dict:
    return {"bucket": {"batch": batch, "context": context}, "config": {"BLOCK_N": block, "num_warps": 4},
            "latency_us": 2.0, "spread_us": 0.1, "baseline_us": 3.0, "speedup": 1.5}


def attention_table() -> dict:
    """Two bucket dims over an incomplete grid: batch 1 has contexts 1024 and 8192, batch 16 only 1024."""
    data = table([])
    data["kernels"][KERNEL] = [{"dims": {"heads": 32, "head_dim": 128}, "dtype": "bfloat16", "form": "window=0",
                                "buckets": [bucket(1, 1024, 32), bucket(1, 8192, 64), bucket(16, 1024, 128)]}]
    return data


@pytest.mark.parametrize("batch, context, block", [
    (1, 512, 32), (1, 1025, 64), (1, 100_000, 64),  # batch 1: the smallest context >= it, else the largest
    (2, 8192, 128), (64, 10, 128),                  # batch 16 (the smallest >= 2, the largest for 64): only 1024
])
def test_the_bucket_rule_goes_dim_by_dim(batch, context, block):
    t = parse_table(attention_table())
    dims = {"batch": batch, "context": context, "heads": 32, "head_dim": 128}
    assert t.lookup(KERNEL, dims, "bfloat16", "window=0").config == {"BLOCK_N": block, "num_warps": 4}
    assert t.bucket_dims[KERNEL] == ("batch", "context")
    assert t.lookup(KERNEL, {**dims, "heads": 8}, "bfloat16", "window=0") is None  # untuned shape
    assert t.lookup(KERNEL, dims, "float16", "window=0") is None and t.lookup(KERNEL, dims, "bfloat16") is None
    assert t.lookup("other:Space", dims, "bfloat16") is None
    with pytest.raises(ValueError, match="lack the bucket dim"):
        t.lookup(KERNEL, {"batch": 1}, "bfloat16")


def test_tuned_values_are_a_dims_values_among_the_buckets_the_dims_before_it_pick():
    t = parse_table(attention_table())
    shape = {"heads": 32, "head_dim": 128}

    def values(dim, dims, dtype="bfloat16", form="window=0"):
        return t.tuned_values(KERNEL, dim, {**dims, **shape}, dtype, form)

    # batch 1 and 16 are tuned: the rule picks 1 for batch 1, 16 for 2 and 64 (the largest), as `lookup` does.
    assert values("context", {"batch": 1}) == [1024, 8192]
    assert values("context", {"batch": 2}) == values("context", {"batch": 64, "context": 5}) == [1024]
    assert values("batch", {}) == [1, 16]  # the first bucket dim: every bucket's
    assert values("context", {"batch": 1}, dtype="float16") == values("context", {"batch": 1}, form="") == []
    assert t.tuned_values("other:Space", "context", {"batch": 1}, "bfloat16") == []
    with pytest.raises(ValueError, match="lack the bucket dim"):
        values("context", {})
    with pytest.raises(ValueError, match="no bucket dim 'tokens'"):
        values("tokens", {"batch": 1})


def _broken(change) -> dict:
    data = attention_table()
    change(data["kernels"][KERNEL])
    return data


@pytest.mark.parametrize("data, match", [
    (_broken(lambda k: k[0]["dims"].update(heads=32.0)), rf"kernels\.{KERNEL}\[0\]\.dims\.heads: expected an int"),
    (_broken(lambda k: k[0]["buckets"][0]["config"].update(num_warps=True)),
     r"buckets\[0\]\.config\.num_warps: expected an int, got true"),
    (_broken(lambda k: k[0]["buckets"][1].update(latency_us=math.nan)), r"buckets\[1\]\.latency_us: expected a finite"),
    (_broken(lambda k: k[0]["buckets"][1]["bucket"].update(heads=32)), r"dim\(s\) heads also in the entry's dims"),
    (_broken(lambda k: k[0]["buckets"][2]["bucket"].pop("context")), r"buckets\[2\]: dims head_dim, heads and bucket "
                                                                     r"dims batch; the kernel's first entry has"),
    (_broken(lambda k: k[0]["buckets"].append(bucket(1, 1024, 16))), r"bucket \{'batch': 1, 'context': 1024\} appears"),
    (_broken(lambda k: k.append(copy.deepcopy(k[0]))), r"appears twice"),
    (_broken(lambda k: k[0]["buckets"][0].update(M=1)), r"buckets\[0\]: unknown field\(s\) M"),
    (_broken(lambda k: k[0].update(form=3)), r"\[0\]\.form: expected a string"),
    (_broken(lambda k: k[0]["buckets"][0].update(config={})), r"config: expected a non-empty JSON object"),
])
def test_a_generic_entry_is_checked_structurally(data, match):
    with pytest.raises(ValueError, match=match):
        parse_table(data)


def test_a_name_that_is_neither_builtin_nor_a_plugin_is_refused():
    data = table([])
    data["kernels"]["softmax"] = attention_table()["kernels"][KERNEL]
    with pytest.raises(ValueError, match="kernels.softmax: unknown kernel; expected one of rms_norm_linear, linear, "
                                         "attention_decode, attention_prefill or a plugin's module:Class"):
        parse_table(data)


def test_this_projects_attention_entries_must_bucket_in_the_runtimes_order():
    data = table([])
    data["kernels"]["attention_decode"] = copy.deepcopy(attention_table()["kernels"][KERNEL])
    assert parse_table(data).bucket_dims["attention_decode"] == ("batch", "context")
    for b in data["kernels"]["attention_decode"][0]["buckets"]:  # the same buckets, context written first
        b["bucket"] = {"context": b["bucket"]["context"], "batch": b["bucket"]["batch"]}
    with pytest.raises(ValueError, match="kernels.attention_decode: bucket dims context, batch; expected batch, "
                                         "context, in this order"):
        parse_table(data)
    data["kernels"][KERNEL] = data["kernels"].pop("attention_decode")  # a plugin's order is its space's own
    assert parse_table(data).bucket_dims[KERNEL] == ("context", "batch")


def test_merge_replaces_the_retuned_buckets_and_keeps_the_others(tmp_path):
    old = attention_table()
    new = table([])
    new["created"] = "2026-12-01T00:00:00+00:00"
    new["kernels"][KERNEL] = [{"dims": {"heads": 32, "head_dim": 128}, "dtype": "bfloat16", "form": "window=0",
                               "buckets": [bucket(1, 8192, 256), bucket(4, 2048, 16)]}]
    merged = merge_tables(old, new)
    write_table(merged, tmp_path / "t.json")
    t = load_table(tmp_path / "t.json")
    [buckets] = t.generic.values()
    assert [(b.bucket["batch"], b.bucket["context"], b.config["BLOCK_N"]) for b in buckets] == [
        (1, 1024, 32), (1, 8192, 256), (4, 2048, 16), (16, 1024, 128)]


def test_export_buckets_a_plugins_results_and_leaves_out_one_whose_space_is_gone(monkeypatch):
    from tests.cli.test_cli import ROOT
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    config = {"BLOCK": 128, "ROWS": 1, "num_warps": 4, "num_stages": 2}

    def row(kernel: str, rows: int, finished: str, us: float) -> dict:
        return dict(gpu="h100", gpu_id=1, gpu_name="NVIDIA H100", torch="2.11.0", triton="3.6.0", kernel=kernel,
                    dtype="float16", K=None, N=None, M=None, dims={"rows": rows, "cols": 300}, form="",
                    config=config, median_us=us, spread_us=0.1, baseline_us=3.0, speedup=3.0 / us, tflops=0.0, gbps=1.0,
                    finished_at=pd.Timestamp(finished), study_name=f"{kernel}|...")

    best = pd.DataFrame([row("softmax_plugin:SoftmaxSpace", 8, "2026-11-02", 2.0),
                         row("softmax_plugin:SoftmaxSpace", 8, "2026-11-01", 9.0),  # older: replaced
                         row("softmax_plugin:SoftmaxSpace", 1, "2026-11-01", 1.0),
                         row("gone_module:Space", 1, "2026-11-01", 1.0)])
    with pytest.warns(UserWarning, match="kernel gone_module:Space left out of the table: --kernel gone_module:Space: "
                                         "cannot import gone_module"):
        data = build_table(best)
    assert list(data["kernels"]) == ["softmax_plugin:SoftmaxSpace"]
    [entry] = data["kernels"]["softmax_plugin:SoftmaxSpace"]
    assert entry["dims"] == {"cols": 300} and "form" not in entry
    assert [(b["bucket"], b["latency_us"]) for b in entry["buckets"]] == [({"rows": 1}, 1.0), ({"rows": 8}, 2.0)]
    parse_table(data)
