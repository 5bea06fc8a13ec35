"""The lookup table's format: tuned configs of one GPU, written by `cli.py export-table`, read by the runtime.

Format (JSON, format_version 1):

    {
      "format": "nano-vllm-coconut/lookup-table",
      "format_version": 1,
      "gpu": "h100",                       # normalized device name
      "gpu_name": "NVIDIA H100 80GB HBM3", # torch.cuda.get_device_name()
      "torch": "2.11.0", "triton": "3.6.0",
      "created": "2026-11-27T00:10:00+00:00",
      "kernels": {
        "rms_norm_linear": [
          {"K": 4096, "N": 12288, "dtype": "bfloat16",
           "buckets": [
             {"M": 1, "config": {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4,
                                 "num_stages": 4, "GROUP_M": 1, "SPLIT_K": 4},
              "latency_us": 25.1, "spread_us": 0.2, "baseline_us": 42.7, "speedup": 1.70,
              "epilogue": "rotary=128/32"},
             ...]}]}
    }

A bucket's optional "epilogue" is the form its result was timed in, as the runtime runs that site: "gated"
(SiLU-and-mul after gate/up), "rotary=<head_dim>/<kv_heads>" (QKV with the rotary embedding and KV-cache write);
absent for the plain product. A result timed in its form outranks a plain one of the same bucket, however new: the
plain timing leaves out the epilogue the runtime runs, and picked tiles that lost end to end (llama-13b at batch 32,
docs/PERF_NOTES.md session 14). So a later plain `NxK` tune of a model's QKV shape does not replace its buckets.

"kernels" holds one list per tuned kernel: "rms_norm_linear" (the fused sites) and "linear" (its norm-free GEMM,
o_proj and down_proj); export writes every kernel the database has results for. `export-table --merge` adds
them to the table already at --out (autotune/export.py's merge_tables), bucket by bucket: the database's (kernel, K,
N, dtype, M) results replace the file's (unless the file's was timed in its form and the database's was not), the
file's other buckets are kept.

Bucket rule (LookupTable.bucket): a problem with M rows uses the smallest tuned bucket >= M, else the largest.
Which bucket runs fused at all is the selection rule of tuning_table/select.py.
A table is only valid for the software it names: configs tuned under one Triton can lose under another.
"""
from __future__ import annotations

import json
import warnings
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kernels.config import DTYPES, Config
from kernels.epilogue import Epilogue

FORMAT = "nano-vllm-coconut/lookup-table"
FORMAT_VERSION = 1
_BUCKET_FIELDS = ("M", "config", "latency_us", "spread_us", "baseline_us", "speedup")


@dataclass(frozen=True)
class Bucket:
    """One tuned M of a (kernel, K, N, dtype): its config in the stacked product's terms, the measured speedup over
    the baseline (below 1: the baseline won) and the epilogue its result was timed in."""
    M: int
    config: Config
    speedup: float
    epilogue: Epilogue


@dataclass
class LookupTable:
    gpu: str
    gpu_name: str
    torch: str
    triton: str
    created: str
    # (kernel, K, N, dtype) -> its buckets by ascending M
    entries: dict[tuple[str, int, int, str], list[Bucket]] = field(default_factory=dict)

    def bucket(self, kernel: str, K: int, N: int, dtype: torch.dtype | str, M: int) -> Bucket | None:
        """The bucket rule: the smallest tuned bucket >= M, else the largest; None when (K, N, dtype) is untuned."""
        buckets = self.entries.get((kernel, K, N, dtype_name(dtype)))
        if not buckets:
            return None
        i = bisect_left([b.M for b in buckets], M)
        return buckets[min(i, len(buckets) - 1)]

    def largest_bucket(self, kernel: str, K: int, N: int, dtype: torch.dtype | str) -> int | None:
        """The largest tuned M of (K, N, dtype); None when it is untuned."""
        buckets = self.entries.get((kernel, K, N, dtype_name(dtype)))
        return buckets[-1].M if buckets else None


def dtype_name(dtype: torch.dtype | str) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def parse_table(data: object, source: str = "table") -> LookupTable:
    """Validate a decoded table; ValueError naming the first problem."""
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ValueError(f"{source}: {what}")

    need(isinstance(data, dict), "expected a JSON object at the top level")
    need(data.get("format") == FORMAT, f"'format' is {data.get('format')!r}, expected {FORMAT!r}")
    need(data.get("format_version") == FORMAT_VERSION,
         f"format_version {data.get('format_version')!r}; this code reads version {FORMAT_VERSION}")
    for key in ("gpu", "gpu_name", "torch", "triton", "created"):
        need(isinstance(data.get(key), str), f"missing or non-string field {key!r}")
    need(isinstance(data.get("kernels"), dict), "missing object 'kernels'")
    table = LookupTable(data["gpu"], data["gpu_name"], data["torch"], data["triton"], data["created"])
    for kernel, entries in data["kernels"].items():
        need(isinstance(entries, list), f"kernels.{kernel}: expected a list")
        for i, e in enumerate(entries):
            where = f"kernels.{kernel}[{i}]"
            need(isinstance(e, dict) and all(isinstance(e.get(k), int) for k in ("K", "N")),
                 f"{where}: expected an object with integer K and N")
            need(isinstance(e.get("dtype"), str) and e["dtype"] in DTYPES, f"{where}: dtype {e.get('dtype')!r}, expected one of {sorted(DTYPES)}")
            need(isinstance(e.get("buckets"), list) and e["buckets"], f"{where}: expected a non-empty 'buckets' list")
            buckets = []
            for b in e["buckets"]:
                need(isinstance(b, dict) and all(k in b for k in _BUCKET_FIELDS),
                     f"{where}: each bucket needs fields {list(_BUCKET_FIELDS)}")
                need(isinstance(b["M"], int) and b["M"] >= 1, f"{where}: bucket M {b['M']!r}, expected an int >= 1")
                try:
                    config = Config.from_dict(b["config"])
                    config.validate(K=e["K"], norm=kernel != "linear")  # the norm-free GEMM has no SUMSQ_IN_LOOP
                except (ValueError, TypeError, AttributeError, OverflowError) as err:
                    raise ValueError(f"{source}: {where} M={b['M']}: bad config ({err})") from None
                need(isinstance(b["speedup"], (int, float)) and b["speedup"] > 0,
                     f"{where}: bucket M={b['M']}: speedup {b['speedup']!r}, expected a positive number")
                try:
                    epilogue = Epilogue.parse(b.get("epilogue", ""))
                except ValueError as err:
                    raise ValueError(f"{source}: {where} M={b['M']}: {err}") from None
                buckets.append(Bucket(b["M"], config, float(b["speedup"]), epilogue))
            buckets.sort(key=lambda bucket: bucket.M)
            need(len({b.M for b in buckets}) == len(buckets), f"{where}: repeated M bucket")
            key = (kernel, e["K"], e["N"], e["dtype"])
            need(key not in table.entries, f"{where}: (K={e['K']}, N={e['N']}, {e['dtype']}) appears twice")
            table.entries[key] = buckets
    return table


def read_table_file(path: str | Path) -> object:
    """The decoded JSON of a table file, not yet validated (parse_table does that)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"lookup table {path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"lookup table {path}: not valid JSON ({e})") from None


def load_table(path: str | Path) -> LookupTable:
    return parse_table(read_table_file(path), f"lookup table {path}")


def write_table(table: dict, path: str | Path) -> None:
    """Check the table parses, then replace `path` atomically, so a reader never sees half a file."""
    parse_table(table)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    tmp.replace(path)
