"""The writer's side of the lookup table (format: tuning_table/format.py): a table built from the database's
results (`build_table`, for `nvc export-table`) and added to a table already on disk (`merge_tables`, --merge).
A generic kernel's (a plugin's) entries are built the same way, its buckets over its space's `bucket_dims`."""
from __future__ import annotations

import warnings
from datetime import datetime, timezone

import pandas as pd

from kernels.config import Config
from search_spaces import get_space
from tuning_table.format import FORMAT, FORMAT_VERSION, KERNELS, dims_key, is_generic, parse_table

_BUCKET_KEY = ["kernel", "dtype", "K", "N", "M"]


def build_table(best: pd.DataFrame) -> dict:
    """The table of one GPU from `db.queries.best_results` rows: the newest finished result of every bucket,
    preferring one timed in its form (tuning_table/format.py says why)."""
    if best.empty:
        raise ValueError("no finished tuning results to export (run `nvc tune` first)")
    if best["gpu"].nunique() != 1:
        raise ValueError(f"results of several GPUs ({', '.join(sorted(best['gpu'].unique()))}); pass --gpu")
    # A driver or Triton upgrade is a new GPU row, while a finished study is not tuned again: keep the newest
    # result of every bucket (dropping older buckets would silently lose shapes) and say when versions mix;
    # a result timed in its form outranks plain ones (module docstring).
    generic = best[best["kernel"].map(is_generic)]
    best = best[best["kernel"].isin(KERNELS)]
    best = best.assign(formed=best["form"] != "").sort_values(["formed", "finished_at"])
    chosen = best.groupby(_BUCKET_KEY).tail(1)
    kept = chosen.loc[chosen["formed"], [*_BUCKET_KEY, "finished_at"]]
    newer = best[~best["formed"]].merge(kept, on=_BUCKET_KEY, suffixes=("", "_kept"))
    newer = newer[newer["finished_at"] > newer["finished_at_kept"]]
    if not newer.empty:
        r = newer.iloc[0]
        warnings.warn(f"{len(newer)} newer plain result(s) left out for ones timed in the runtime's form (first: "
                      f"{r.kernel} K={r.K} N={r.N} M={r.M}, study {r.study_name!r})")
    best = pd.concat([chosen, generic]) if not generic.empty else chosen
    newest = best.loc[best["finished_at"].idxmax()]
    if best["gpu_id"].nunique() > 1:
        warnings.warn(f"the {newest['gpu']} table mixes results tuned under several driver/torch/triton versions; "
                      f"its header names the newest (torch {newest['torch']}, triton {newest['triton']})")
    kernels: dict[str, list] = _generic_entries(generic)
    for (kernel, dtype, K, N), rows in chosen.groupby(["kernel", "dtype", "K", "N"], sort=True):
        # A config stored before an axis existed lacks it and ran that axis's default: the table names every field.
        buckets = [{"M": int(r.M), "config": Config.from_dict(r.config).to_dict(), "latency_us": float(r.median_us),
                    "spread_us": float(r.spread_us), "baseline_us": float(r.baseline_us), "speedup": float(r.speedup),
                    **({"epilogue": r.form} if r.form else {})}
                   for r in rows.sort_values("M").itertuples()]
        kernels.setdefault(kernel, []).append({"K": int(K), "N": int(N), "dtype": dtype, "buckets": buckets})
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "gpu": newest["gpu"], "gpu_name": newest["gpu_name"],
            "torch": newest["torch"], "triton": newest["triton"],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "kernels": dict(sorted(kernels.items()))}


def _generic_entries(best: pd.DataFrame) -> dict[str, list]:
    """The generic kernels' entries of best_results rows: per kernel its space's bucket dims (so the space must load:
    a kernel whose space does not is left out, with a warning naming it), and per (other dims, dtype, form) the
    newest result of each bucket."""
    kernels: dict[str, list] = {}
    for kernel, rows in best.groupby("kernel", sort=True):
        try:
            bucket_dims = get_space(kernel).bucket_dims
        except ValueError as e:
            warnings.warn(f"kernel {kernel} left out of the table: {e}")
            continue
        entries: dict[tuple, dict] = {}
        for r in rows.sort_values("finished_at").itertuples():
            fixed = {k: int(v) for k, v in r.dims.items() if k not in bucket_dims}
            entry = entries.setdefault((dims_key(fixed), r.dtype, r.form), {
                "dims": fixed, "dtype": r.dtype, **({"form": r.form} if r.form else {}), "buckets": {}})
            bucket = {d: int(r.dims[d]) for d in bucket_dims}
            entry["buckets"][tuple(bucket.values())] = {
                "bucket": bucket, "config": {k: int(v) for k, v in r.config.items()},
                "latency_us": float(r.median_us), "spread_us": float(r.spread_us),
                "baseline_us": float(r.baseline_us), "speedup": float(r.speedup)}
        kernels[kernel] = [{**e, "buckets": [e["buckets"][k] for k in sorted(e["buckets"])]}
                           for _, e in sorted(entries.items())]
    return kernels


def merge_tables(old: object, new: dict, source: str = "existing table") -> dict:
    """`new` (just built from a database) added to `old` (a table shipped or exported earlier), bucket by bucket: a
    (kernel, K, N, dtype, M) that `new` has takes new's result, every other bucket of `old` is kept (a quick re-tune
    of one M must not drop the others), and so is one timed in its form where new's was not
    (tuning_table/format.py). The header is the one of the newer table by 'created'. Both are checked with
    parse_table first: a bucket of a malformed old table (say "K": true) would otherwise be carried into the merge."""
    parse_table(old, source)
    parse_table(new, "the database's table")
    if old["gpu"] != new["gpu"]:
        raise ValueError(f"{source}: gpu {old['gpu']!r}, but the results to merge are of {new['gpu']!r}")
    if old["gpu_name"] != new["gpu_name"]:
        warnings.warn(f"{source} was tuned on {old['gpu_name']!r}, the results to merge on {new['gpu_name']!r}: "
                      f"both count as {new['gpu']!r}")
    newest = old if _created(old) > _created(new) else new
    if (old["torch"], old["triton"]) != (new["torch"], new["triton"]):
        warnings.warn(f"the merged {new['gpu']} table mixes entries tuned under torch {old['torch']}, triton "
                      f"{old['triton']} ({source}) and torch {new['torch']}, triton {new['triton']} (the database); "
                      f"its header names the newest (torch {newest['torch']}, triton {newest['triton']})")
    kernels, outranked = {}, []
    for kernel in sorted(old["kernels"].keys() | new["kernels"].keys()):
        if is_generic(kernel):
            kernels[kernel] = _merge_generic(old["kernels"].get(kernel, []), new["kernels"].get(kernel, []))
            continue
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


def _merge_generic(old: list[dict], new: list[dict]) -> list[dict]:
    """A generic kernel's entries of both tables, bucket by bucket, new's where both have one."""
    def key(e: dict) -> tuple:
        return dims_key(e["dims"]), e["dtype"], e.get("form", "")

    entries = {key(e): e for e in old}
    for e in new:
        buckets = {tuple(b["bucket"].values()): b for b in entries.get(key(e), {"buckets": []})["buckets"]}
        buckets.update((tuple(b["bucket"].values()), b) for b in e["buckets"])
        entries[key(e)] = {**e, "buckets": [buckets[k] for k in sorted(buckets)]}
    return [entries[k] for k in sorted(entries)]


def _entry_key(entry: dict) -> tuple[str, int, int]:
    return entry["dtype"], entry["K"], entry["N"]  # build_table's order within a kernel


def _created(table: dict) -> datetime:
    """A checked table's 'created' (parse_table refused any other); a time without a zone is read as UTC, as
    build_table writes it."""
    t = datetime.fromisoformat(table["created"])
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
