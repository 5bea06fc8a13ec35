"""The table format checked strictly: exact JSON types, known kernels and GPUs, complete configs, no unknown keys,
each refusal naming the field's path; export and merge refuse before writing, and a failed write leaves the old
file as it was and no temporary file behind."""
import copy
import errno
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from autotune.export import build_table, merge_tables
from kernels.config import Config
from tests import tuning_tables
from tuning_table import format as table_format
from tuning_table.format import load_table, parse_table, read_table_file, write_table

SHIPPED = Path(__file__).resolve().parents[2] / "tables" / "h200.json"
FUSED = tuning_tables.entry(4096, 12288, {1: Config(16, 64, 128, 4, 4, 1, 4), 64: Config(64, 128, 64)}, "bfloat16")
PLAIN = tuning_tables.entry(4096, 4096, {1: Config(16, 64, 128, 4, 4, 1, 2)}, "bfloat16")
TABLE = tuning_tables.table([FUSED], linear=[PLAIN])
B0 = r"kernels\.rms_norm_linear\[0\]\.buckets\[0\]"


def _edited(edit) -> dict:
    t = copy.deepcopy(TABLE)
    edit(t)
    return t


def _fused(t: dict) -> dict:
    return t["kernels"]["rms_norm_linear"][0]


def _bucket(t: dict) -> dict:
    return _fused(t)["buckets"][0]


@pytest.mark.parametrize("edit, message", [
    (lambda t: _fused(t).update(K=True), r"kernels\.rms_norm_linear\[0\]\.K: expected an int >= 1, got true"),
    (lambda t: _fused(t).update(N=12288.0), r"kernels\.rms_norm_linear\[0\]\.N: expected an int >= 1, got 12288\.0"),
    (lambda t: _bucket(t).update(M=True), rf"{B0}\.M: bucket M true is not an int >= 1"),
    (lambda t: t["kernels"].update(matmul=[]),
     r"kernels\.matmul: unknown kernel; expected one of rms_norm_linear, linear"),
    (lambda t: _bucket(t)["config"].pop("num_warps"), rf"{B0}\.config: missing field\(s\) num_warps"),
    (lambda t: _bucket(t)["config"].update(TMA=False), rf"{B0}\.config\.TMA: expected an int, got false"),
    (lambda t: _bucket(t).update(latency_us=float("nan")),
     rf"{B0}\.latency_us: expected a finite positive number, got NaN"),
    (lambda t: _bucket(t).update(latency_us="fast"),
     rf"{B0}\.latency_us: expected a finite positive number, got 'fast'"),
    (lambda t: _bucket(t).update(baseline_us=float("inf")), rf"{B0}\.baseline_us: expected a finite positive number"),
    (lambda t: _bucket(t).update(speedup=0), rf"{B0}\.speedup: expected a finite positive number, got 0"),
    (lambda t: _bucket(t).update(speedup=True), rf"{B0}\.speedup: expected a finite positive number, got true"),
    (lambda t: _bucket(t).update(spread_us=-0.1), rf"{B0}\.spread_us: expected a finite number >= 0, got -0\.1"),
    (lambda t: t.update(gpu="potato"), r"gpu: expected a normalized GPU name \(.*\), got 'potato'"),
    (lambda t: t.update(gpu="H100"), r"gpu: expected a normalized GPU name"),
    (lambda t: t.update(gpu_name=""), r"gpu_name: expected a non-empty string"),
    (lambda t: t.update(created="last tuesday"), r"created: expected an ISO 8601 time, got 'last tuesday'"),
    (lambda t: t.update(created=20261127), r"created: expected an ISO 8601 time, got 20261127"),
    (lambda t: t.update(format_version=True), r"format_version true; this code reads version 1"),
    (lambda t: t.update(notes="tuned by hand"), r"unknown field\(s\) notes \(expected format, "),
    (lambda t: _fused(t).update(model="llama-7b"), r"kernels\.rms_norm_linear\[0\]: unknown field\(s\) model"),
    (lambda t: _bucket(t).update(tflops=1.0), rf"{B0}: unknown field\(s\) tflops"),
    (lambda t: t["kernels"]["linear"][0]["buckets"][0].update(epilogue="gated"),
     r"kernels\.linear\[0\]\.buckets\[0\]\.epilogue: the plain linear kernel has no epilogue, got 'gated'"),
])
def test_each_bad_field_is_refused_by_its_path(tmp_path, edit, message):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(_edited(edit)))  # NaN and Infinity as json.dumps spells them, and json.loads reads
    with pytest.raises(ValueError, match=f"^lookup table {re.escape(str(path))}: {message}"):
        load_table(path)


def _written(path: Path, data: dict) -> bytes:
    path.write_text(json.dumps(data, indent=1))
    return path.read_bytes()


def test_merge_refuses_an_old_table_with_a_bool_k_and_leaves_the_file(tmp_path):
    # The K = true entry that --merge used to keep beside the K = 64 one.
    old = _edited(lambda t: t["kernels"]["rms_norm_linear"].append({**copy.deepcopy(FUSED), "K": True}))
    path = tmp_path / "h100.json"
    before = _written(path, old)
    refused = rf"lookup table {re.escape(str(path))}: kernels\.rms_norm_linear\[1\]\.K: expected an int >= 1, got true"
    with pytest.raises(ValueError, match=refused):
        write_table(merge_tables(read_table_file(path), TABLE, f"lookup table {path}"), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["h100.json"]


def _raise(error: BaseException):
    def fail(*args, **kwargs):
        raise error
    return fail


@pytest.mark.parametrize("target, error", [
    ("json.dumps", TypeError("Object of type Tensor is not JSON serializable")),
    ("os.fsync", OSError(errno.ENOSPC, "No space left on device")),  # a full disk found at the flush
    ("os.replace", OSError(errno.ENOSPC, "No space left on device")),
    ("os.replace", PermissionError(errno.EACCES, "Permission denied")),
    ("os.chmod", PermissionError(errno.EPERM, "Operation not permitted")),
])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch, target, error):
    path = tmp_path / "h100.json"
    before = _written(path, TABLE)
    module, name = target.split(".")
    monkeypatch.setattr(getattr(table_format, module), name, _raise(error))
    with pytest.raises(type(error)):
        write_table(_edited(lambda t: t.update(torch="9.9")), path)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["h100.json"]


def test_a_directory_as_the_destination_is_one_line_and_writes_nothing(tmp_path):
    folder = tmp_path / "h100.json"
    folder.mkdir()
    with pytest.raises(ValueError) as info:
        write_table(TABLE, folder)
    assert str(info.value) == f"lookup table {folder}: is a directory; expected the path of a .json file"
    assert os.listdir(tmp_path) == ["h100.json"] and os.listdir(folder) == []


def test_the_shipped_table_and_what_export_writes_parse(tmp_path):
    # The shipped table passes the strict check and round-trips through write_table, leaving only itself.
    out = tmp_path / "h200.json"
    write_table(read_table_file(SHIPPED), out)
    assert json.loads(out.read_text()) == json.loads(SHIPPED.read_text()) and os.listdir(tmp_path) == ["h200.json"]
    assert load_table(out).entries == load_table(SHIPPED).entries
    # A measurement stored before the TMA and EVICT axes existed ran TMA = 0 and EVICT = 0: export names every
    # config field.
    old = {k: v for k, v in Config(16, 64, 128, 4, 4, 1, 2).to_dict().items() if k not in ("TMA", "EVICT")}
    best = pd.DataFrame([dict(gpu="h100", gpu_id=1, gpu_name="NVIDIA H100", torch="2.11.0", triton="3.6.0",
                              kernel="linear", dtype="bfloat16", K=4096, N=4096, M=1, config=old, median_us=10.0,
                              spread_us=0.1, baseline_us=13.0, speedup=1.3, finished_at=pd.Timestamp("2026-11-01"),
                              form="", study_name="linear|h100|bfloat16|M=1|K=4096|N=4096")])
    table = build_table(best)
    written = table["kernels"]["linear"][0]["buckets"][0]["config"]
    assert (written["TMA"], written["EVICT"]) == (0, 0)
    assert parse_table(table).bucket("linear", 4096, 4096, "bfloat16", 1).config == Config(16, 64, 128, 4, 4, 1, 2)
