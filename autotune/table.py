"""The lookup table: tuned configs of one GPU, exported from the database and read by the runtime.

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
them to the table already at --out (merge_tables), bucket by bucket: the database's (kernel, K, N, dtype, M)
results replace the file's (unless the file's was timed in its form and the database's was not), the file's other
buckets are kept.

Bucket rule: a problem with M rows uses the smallest tuned bucket >= M, else the largest bucket.
A table is only valid for the software it names: configs tuned under one Triton can lose under another.
"""
from __future__ import annotations

import json
import warnings
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from kernels.config import Config
from search_spaces.base import DTYPES, FORM_PATTERN

FORMAT = "nano-vllm-coconut/lookup-table"
FORMAT_VERSION = 1
_BUCKET_FIELDS = ("M", "config", "latency_us", "spread_us", "baseline_us", "speedup")
_BUCKET_KEY = ["kernel", "dtype", "K", "N", "M"]


def build_table(best: pd.DataFrame) -> dict:
    """The table of one GPU from `db.queries.best_results` rows: the newest finished result of every bucket,
    preferring one timed in its form (module docstring)."""
    if best.empty:
        raise ValueError("no finished tuning results to export (run `cli.py tune` first)")
    if best["gpu"].nunique() != 1:
        raise ValueError(f"results of several GPUs ({', '.join(sorted(best['gpu'].unique()))}); pass --gpu")
    # A driver or Triton upgrade is a new GPU row, while a finished study is not tuned again: keep the newest
    # result of every bucket (dropping older buckets would silently lose shapes) and say when versions mix;
    # a result timed in its form outranks plain ones (module docstring).
    best = best.assign(formed=best["epilogue"] != "").sort_values(["formed", "finished_at"])
    chosen = best.groupby(_BUCKET_KEY).tail(1)
    kept = chosen.loc[chosen["formed"], [*_BUCKET_KEY, "finished_at"]]
    newer = best[~best["formed"]].merge(kept, on=_BUCKET_KEY, suffixes=("", "_kept"))
    newer = newer[newer["finished_at"] > newer["finished_at_kept"]]
    if not newer.empty:
        r = newer.iloc[0]
        warnings.warn(f"{len(newer)} newer plain result(s) left out for ones timed in the runtime's form (first: "
                      f"{r.kernel} K={r.K} N={r.N} M={r.M}, study {r.study_name!r})")
    best = chosen
    newest = best.loc[best["finished_at"].idxmax()]
    if best["gpu_id"].nunique() > 1:
        warnings.warn(f"the {newest['gpu']} table mixes results tuned under several driver/torch/triton versions; "
                      f"its header names the newest (torch {newest['torch']}, triton {newest['triton']})")
    kernels: dict[str, list] = {}
    for (kernel, dtype, K, N), rows in best.groupby(["kernel", "dtype", "K", "N"], sort=True):
        buckets = [{"M": int(r.M), "config": dict(r.config), "latency_us": float(r.median_us),
                    "spread_us": float(r.spread_us), "baseline_us": float(r.baseline_us), "speedup": float(r.speedup),
                    **({"epilogue": r.epilogue} if r.epilogue else {})}
                   for r in rows.sort_values("M").itertuples()]
        kernels.setdefault(kernel, []).append({"K": int(K), "N": int(N), "dtype": dtype, "buckets": buckets})
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "gpu": newest["gpu"], "gpu_name": newest["gpu_name"],
            "torch": newest["torch"], "triton": newest["triton"],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "kernels": kernels}


@dataclass
class LookupTable:
    gpu: str
    gpu_name: str
    torch: str
    triton: str
    created: str
    # (kernel, K, N, dtype) -> ascending M buckets: (M, config, measured speedup over the baseline, epilogue)
    entries: dict[tuple[str, int, int, str], list[tuple[int, Config, float, str]]] = field(default_factory=dict)

    def lookup(self, K: int, N: int, M: int, dtype: torch.dtype | str,
               kernel: str = "rms_norm_linear") -> Config | None:
        """The config of the smallest tuned bucket >= M (else the largest); None when (K, N, dtype) is untuned."""
        bucket = self._bucket(K, N, M, dtype, kernel)
        return bucket[1] if bucket else None

    def speedup(self, K: int, N: int, M: int, dtype: torch.dtype | str,
                kernel: str = "rms_norm_linear") -> float | None:
        """The measured speedup over the baseline of the bucket `lookup` picks (below 1: the baseline won)."""
        bucket = self._bucket(K, N, M, dtype, kernel)
        return bucket[2] if bucket else None

    def largest_bucket(self, K: int, N: int, dtype: torch.dtype | str, kernel: str = "rms_norm_linear") -> int | None:
        """The largest tuned M of (K, N, dtype); None when it is untuned."""
        buckets = self.entries.get((kernel, K, N, _dtype_name(dtype)))
        return buckets[-1][0] if buckets else None

    def _bucket(self, K: int, N: int, M: int, dtype: torch.dtype | str, kernel: str):
        buckets = self.entries.get((kernel, K, N, _dtype_name(dtype)))
        if not buckets:
            return None
        i = bisect_left([b[0] for b in buckets], M)
        return buckets[min(i, len(buckets) - 1)]


def _dtype_name(dtype: torch.dtype | str) -> str:
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
                form = b.get("epilogue", "")
                need(isinstance(form, str) and FORM_PATTERN.fullmatch(form) is not None,
                     f"{where}: bucket M={b['M']}: epilogue {form!r}, expected 'gated' or "
                     "'rotary=<head_dim>/<kv_heads>'")
                buckets.append((b["M"], config, float(b["speedup"]), form))
            buckets.sort(key=lambda mb: mb[0])
            need(len({b[0] for b in buckets}) == len(buckets), f"{where}: repeated M bucket")
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


def merge_tables(old: object, new: dict, source: str = "existing table") -> dict:
    """`new` (just built from a database) added to `old` (a table shipped or exported earlier, checked with
    parse_table), bucket by bucket: a (kernel, K, N, dtype, M) that `new` has takes new's result, every other
    bucket of `old` is kept (a quick re-tune of one M must not drop the others), and so is one timed in its form
    where new's was not (module docstring). The header is the one of the newer table by 'created'."""
    parse_table(old, source)
    if old["gpu"] != new["gpu"]:
        raise ValueError(f"{source}: gpu {old['gpu']!r}, but the results to merge are of {new['gpu']!r}")
    if old["gpu_name"] != new["gpu_name"]:
        warnings.warn(f"{source} was tuned on {old['gpu_name']!r}, the results to merge on {new['gpu_name']!r}: "
                      f"both count as {new['gpu']!r}")
    newest = old if _created(old, source) > _created(new, "new table") else new
    if (old["torch"], old["triton"]) != (new["torch"], new["triton"]):
        warnings.warn(f"the merged {new['gpu']} table mixes entries tuned under torch {old['torch']}, triton "
                      f"{old['triton']} ({source}) and torch {new['torch']}, triton {new['triton']} (the database); "
                      f"its header names the newest (torch {newest['torch']}, triton {newest['triton']})")
    kernels, outranked = {}, []
    for kernel in sorted(old["kernels"].keys() | new["kernels"].keys()):
        entries = {_entry_key(e): e for e in old["kernels"].get(kernel, [])}
        for e in new["kernels"].get(kernel, []):
            buckets = {b["M"]: b for b in entries.get(_entry_key(e), {"buckets": []})["buckets"]}
            for b in e["buckets"]:
                if buckets.get(b["M"], {}).get("epilogue") and not b.get("epilogue"):
                    outranked.append(f"{kernel} K={e['K']} N={e['N']} M={b['M']}")
                else:
                    buckets[b["M"]] = b
            entries[_entry_key(e)] = {**e, "buckets": [buckets[m] for m in sorted(buckets)]}
        kernels[kernel] = [entries[key] for key in sorted(entries)]
    if outranked:
        warnings.warn(f"{source}: kept {len(outranked)} bucket(s) timed in the runtime's form over the database's "
                      f"plain results (first: {outranked[0]})")
    header = {k: newest[k] for k in ("gpu_name", "torch", "triton", "created")}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "gpu": new["gpu"], **header, "kernels": kernels}


def _entry_key(entry: dict) -> tuple[str, int, int]:
    return entry["dtype"], entry["K"], entry["N"]  # build_table's order within a kernel


def _created(table: dict, source: str) -> datetime:
    try:
        t = datetime.fromisoformat(table["created"])
    except ValueError:
        raise ValueError(f"{source}: 'created' {table['created']!r} is not an ISO 8601 time") from None
    # build_table writes UTC; a hand-written time without a zone is read as UTC too.
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def write_table(table: dict, path: str | Path) -> None:
    """Check the table parses, then replace `path` atomically, so a reader never sees half a file."""
    parse_table(table)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    tmp.replace(path)
