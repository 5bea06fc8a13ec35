"""The lookup table's format: tuned configs of one GPU, written by `nvc export-table`, read by the runtime.

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
                                 "num_stages": 4, "GROUP_M": 1, "SPLIT_K": 4, "SUMSQ_IN_LOOP": 0, "TMA": 0,
                                 "EVICT": 0},
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

Any other kernel (a plugin's search space, named by the `module:Class` it was tuned as, docs/PLUGINS.md; or a name
of GENERIC_KERNELS) has entries of named integer sizes instead of K and N, and buckets over the dims its space
buckets over (`bucket_dims`) instead of M:

        "softmax_plugin:SoftmaxSpace": [
          {"dims": {"cols": 32000}, "dtype": "float16", "form": "",
           "buckets": [{"bucket": {"rows": 1}, "config": {"BLOCK": 1024, "num_warps": 4, "num_stages": 2},
                        "latency_us": 3.1, "spread_us": 0.1, "baseline_us": 4.0, "speedup": 1.29}, ...]}]

"form" (a variant string, "" for none) is optional. Every entry of such a kernel names the same dims and its
buckets the same bucket dims, in the same order (for this project's kernels, GENERIC_KERNELS' order); an entry is
one (dims, dtype, form), a bucket one set of bucket values. Its configs are objects of integers, checked against
the space's axes where the space can be imported (search_spaces/plugin.py: check_table), only structurally here,
where just the file is read.

Bucket rule (LookupTable.bucket): a problem with M rows uses the smallest tuned bucket >= M, else the largest.
The same rule for other kernels (LookupTable.lookup), one bucket dim after the other in their order: the smallest
tuned value >= the problem's, else the largest, among the buckets the dims before left.
Which bucket runs fused at all is the selection rule of tuning_table/select.py.
A table is only valid for the software it names: configs tuned under one Triton can lose under another.

Strict (parse_table): every field above is required (a bucket's "epilogue" only is optional, and a "linear" bucket
has none) and no other is allowed; K, N, M and every Config field are JSON integers (not true, not 64.0), K, N and
M at least 1; latency_us, baseline_us and speedup are finite positive numbers, spread_us a finite number >= 0;
"gpu" is a normalized name of tuning_table/gpus.py, "created" an ISO 8601 time, the kernels those of KERNELS.
A config that only names some fields is refused rather than completed with Config's defaults: the runtime would
launch tiles nobody timed. Each refusal names the field's path (kernels.linear[0].buckets[2].latency_us).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch

from kernels.config import DTYPES, Config
from kernels.epilogue import Epilogue
from tuning_table.gpus import KNOWN_GPUS

FORMAT = "nano-vllm-coconut/lookup-table"
FORMAT_VERSION = 1
KERNELS = ("rms_norm_linear", "linear")
# Kernels of this project whose entries take the generic form (module docstring), with the bucket dims their spaces
# bucket over, in the bucket rule's order (the runtime looks them up so); a plugin's is any `module:Class`.
GENERIC_KERNELS: dict[str, tuple[str, ...]] = {"attention_decode": ("batch", "context"),
                                               "attention_prefill": ("tokens", "context")}
_GENERIC_ENTRY_FIELDS = ("dims", "dtype", "buckets")
_GENERIC_BUCKET_FIELDS = ("bucket", "config", "latency_us", "spread_us", "baseline_us", "speedup")
_TOP_FIELDS = ("format", "format_version", "gpu", "gpu_name", "torch", "triton", "created", "kernels")
_ENTRY_FIELDS = ("K", "N", "dtype", "buckets")
_BUCKET_FIELDS = ("M", "config", "latency_us", "spread_us", "baseline_us", "speedup")
_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(Config))
# A bucket's timings, and whether 0 is allowed (a spread can be; a latency, baseline or speedup cannot).
_TIMINGS = (("latency_us", False), ("spread_us", True), ("baseline_us", False), ("speedup", False))


@dataclass(frozen=True)
class Bucket:
    """One tuned M of a (kernel, K, N, dtype): its config in the stacked product's terms, the measured speedup over
    the baseline (below 1: the baseline won), the same with the config's spread counted against it (the speedup of
    latency + spread: a win no larger than the noise is below 1) and the epilogue its result was timed in."""
    M: int
    config: Config
    speedup: float
    epilogue: Epilogue
    speedup_beyond_noise: float


@dataclass(frozen=True)
class GenericBucket:
    """One tuned set of bucket values (`bucket`, {dim: int}) of a generic kernel's entry: its config as the space's
    axes name it, and the measured speedup over the baseline (below 1: the baseline won)."""
    bucket: dict[str, int]
    config: dict[str, int]
    speedup: float


def is_generic(kernel: str) -> bool:
    """Whether a kernel's entries take the generic form: a plugin's `module:Class`, or one of GENERIC_KERNELS."""
    return kernel in GENERIC_KERNELS or (":" in kernel and kernel not in KERNELS)


def dims_key(dims: dict[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(dims.items()))


@dataclass
class LookupTable:
    gpu: str
    gpu_name: str
    torch: str
    triton: str
    created: str
    # (kernel, K, N, dtype) -> its buckets by ascending M
    entries: dict[tuple[str, int, int, str], list[Bucket]] = field(default_factory=dict)
    # A generic kernel's entries: (kernel, dims_key(fixed dims), dtype, form) -> its buckets; and its bucket dims.
    generic: dict[tuple[str, tuple[tuple[str, int], ...], str, str], list[GenericBucket]] = field(default_factory=dict)
    bucket_dims: dict[str, tuple[str, ...]] = field(default_factory=dict)

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

    def lookup(self, kernel: str, dims: dict[str, int], dtype: torch.dtype | str, form: str = "") -> GenericBucket | None:
        """A generic kernel's bucket for a problem of `dims` (all of them, bucket dims too) by the bucket rule (module
        docstring); None when the kernel or its other dims, dtype and form are untuned."""
        names = self.bucket_dims.get(kernel)
        if names is None:
            return None
        buckets = self._narrow(kernel, dims, dtype, form, names)
        return buckets[0] if buckets else None

    def tuned_values(self, kernel: str, dim: str, dims: dict[str, int], dtype: torch.dtype | str,
                     form: str = "") -> list[int]:
        """The tuned values of the bucket dim `dim`, ascending, among the buckets that `lookup` keeps after the
        bucket dims before `dim` (`dims` holds those and the other dims; it need not hold `dim` or the ones after
        it); [] when the kernel or its other dims, dtype and form are untuned."""
        names = self.bucket_dims.get(kernel)
        if names is None:
            return []
        if dim not in names:
            raise ValueError(f"{kernel} has no bucket dim {dim!r}; its bucket dims are {', '.join(names)}")
        buckets = self._narrow(kernel, dims, dtype, form, names[:names.index(dim)])
        return sorted({b.bucket[dim] for b in buckets})

    def _narrow(self, kernel: str, dims: dict[str, int], dtype: torch.dtype | str, form: str,
                names: tuple[str, ...]) -> list[GenericBucket]:
        """The buckets of a problem of `dims` that the bucket rule keeps, applied to the bucket dims `names` (the
        kernel's first ones) in order; [] when untuned."""
        missing = [n for n in names if n not in dims]
        if missing:
            raise ValueError(f"lookup of {kernel}: dims {dims} lack the bucket dim(s) {', '.join(missing)}")
        fixed = {k: v for k, v in dims.items() if k not in self.bucket_dims[kernel]}
        buckets = self.generic.get((kernel, dims_key(fixed), dtype_name(dtype), form), [])
        for name in names:
            if not buckets:
                return []
            values = sorted({b.bucket[name] for b in buckets})
            chosen = values[min(bisect_left(values, dims[name]), len(values) - 1)]
            buckets = [b for b in buckets if b.bucket[name] == chosen]
        return buckets


def dtype_name(dtype: torch.dtype | str) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def parse_table(data: object, source: str = "table") -> LookupTable:
    """Validate a decoded table by the module docstring's rules; ValueError naming the first problem's path."""
    def need(cond: bool, where: str, what: str) -> None:
        if not cond:
            raise ValueError(f"{source}: {where}: {what}" if where else f"{source}: {what}")

    def fields(obj: object, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
        need(isinstance(obj, dict), where, f"expected a JSON object, got {_show(obj)}")
        expected = ", ".join(required + optional)
        missing = [k for k in required if k not in obj]
        need(not missing, where, f"missing field(s) {', '.join(missing)} (expected {expected})")
        unknown = [str(k) for k in obj if k not in required + optional]
        need(not unknown, where, f"unknown field(s) {', '.join(unknown)} (expected {expected})")

    need(isinstance(data, dict), "", f"expected a JSON object at the top level, got {_show(data)}")
    # A file that is not a table, or of another version, says so before any field is missing.
    need(data.get("format") == FORMAT, "",
         f"'format' is {_show(data['format'])}, expected {FORMAT!r}" if "format" in data else
         f"no 'format' field: not a lookup table (expected 'format': {FORMAT!r})")
    version = data.get("format_version")
    need(_json_int(version) and version == FORMAT_VERSION, "",
         f"format_version {_show(version)}; this code reads version {FORMAT_VERSION}")
    fields(data, "", _TOP_FIELDS)
    need(data["gpu"] in KNOWN_GPUS, "gpu", f"expected a normalized GPU name ({', '.join(KNOWN_GPUS)}), "
                                           f"got {_show(data['gpu'])}")
    for key in ("gpu_name", "torch", "triton"):
        need(isinstance(data[key], str) and data[key].strip() != "", key,
             f"expected a non-empty string, got {_show(data[key])}")
    need(_iso_time(data["created"]), "created", f"expected an ISO 8601 time, got {_show(data['created'])}")
    need(isinstance(data["kernels"], dict), "kernels", f"expected a JSON object, got {_show(data['kernels'])}")
    table = LookupTable(data["gpu"], data["gpu_name"], data["torch"], data["triton"], data["created"])
    for kernel, entries in data["kernels"].items():
        need(kernel in KERNELS or is_generic(kernel), f"kernels.{kernel}",
             f"unknown kernel; expected one of {', '.join(KERNELS + tuple(GENERIC_KERNELS))} or a plugin's "
             "module:Class")
        need(isinstance(entries, list), f"kernels.{kernel}", f"expected a list, got {_show(entries)}")
        if is_generic(kernel):
            _parse_generic(table, kernel, entries, need, fields)
            continue
        for i, e in enumerate(entries):
            where = f"kernels.{kernel}[{i}]"
            fields(e, where, _ENTRY_FIELDS)
            for k in ("K", "N"):
                need(_json_int(e[k]) and e[k] >= 1, f"{where}.{k}", f"expected an int >= 1, got {_show(e[k])}")
            need(isinstance(e["dtype"], str) and e["dtype"] in DTYPES, f"{where}.dtype",
                 f"expected one of {', '.join(sorted(DTYPES))}, got {_show(e['dtype'])}")
            need(isinstance(e["buckets"], list) and e["buckets"] != [], f"{where}.buckets",
                 f"expected a non-empty list, got {_show(e['buckets'])}")
            buckets = []
            for j, b in enumerate(e["buckets"]):
                at = f"{where}.buckets[{j}]"
                fields(b, at, _BUCKET_FIELDS, ("epilogue",))
                need(_json_int(b["M"]) and b["M"] >= 1, f"{at}.M", f"bucket M {_show(b['M'])} is not an int >= 1")
                fields(b["config"], f"{at}.config", _CONFIG_FIELDS)
                for k, v in b["config"].items():
                    need(_json_int(v), f"{at}.config.{k}", f"expected an int, got {_show(v)}")
                config = Config(**b["config"])
                try:
                    config.validate(K=e["K"], norm=kernel != "linear")  # the norm-free GEMM has no SUMSQ_IN_LOOP
                except ValueError as err:
                    raise ValueError(f"{source}: {at}.config: {err}") from None
                for name, zero_ok in _TIMINGS:
                    v = b[name]
                    need(_number(v) and (v >= 0 if zero_ok else v > 0), f"{at}.{name}",
                         f"expected a finite {'number >= 0' if zero_ok else 'positive number'}, got {_show(v)}")
                try:
                    epilogue = Epilogue.parse(b.get("epilogue", ""))
                except ValueError as err:
                    raise ValueError(f"{source}: {at}.epilogue: {err}") from None
                need(kernel != "linear" or not epilogue.paired, f"{at}.epilogue",
                     f"the plain linear kernel has no epilogue, got {epilogue.form!r}")
                beyond_noise = b["speedup"] * b["latency_us"] / (b["latency_us"] + b["spread_us"])
                buckets.append(Bucket(b["M"], config, float(b["speedup"]), epilogue, float(beyond_noise)))
            buckets.sort(key=lambda bucket: bucket.M)
            repeated = sorted(m for m, n in Counter(b.M for b in buckets).items() if n > 1)
            need(not repeated, f"{where}.buckets", f"bucket M {', '.join(map(str, repeated))} appears twice")
            key = (kernel, e["K"], e["N"], e["dtype"])
            need(key not in table.entries, where, f"(K={e['K']}, N={e['N']}, {e['dtype']}) appears twice")
            table.entries[key] = buckets
    return table


def _parse_generic(table: LookupTable, kernel: str, entries: list, need, fields) -> None:
    """A generic kernel's entries into `table` (the module docstring's rules; `need` and `fields` are parse_table's)."""
    def sizes(obj: object, where: str, what: str) -> dict[str, int]:
        need(isinstance(obj, dict), where, f"expected a JSON object of {what}, got {_show(obj)}")
        for k, v in obj.items():
            need(_json_int(v) and v >= 1, f"{where}.{k}", f"expected an int >= 1, got {_show(v)}")
        return obj

    names: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (entry dims, bucket dims) of the first entry
    for i, e in enumerate(entries):
        where = f"kernels.{kernel}[{i}]"
        fields(e, where, _GENERIC_ENTRY_FIELDS, ("form",))
        dims = sizes(e["dims"], f"{where}.dims", "named sizes")
        need(isinstance(e["dtype"], str) and e["dtype"] in DTYPES, f"{where}.dtype",
             f"expected one of {', '.join(sorted(DTYPES))}, got {_show(e['dtype'])}")
        form = e.get("form", "")
        need(isinstance(form, str), f"{where}.form", f"expected a string, got {_show(form)}")
        need(isinstance(e["buckets"], list) and e["buckets"] != [], f"{where}.buckets",
             f"expected a non-empty list, got {_show(e['buckets'])}")
        buckets = []
        for j, b in enumerate(e["buckets"]):
            at = f"{where}.buckets[{j}]"
            fields(b, at, _GENERIC_BUCKET_FIELDS)
            bucket = sizes(b["bucket"], f"{at}.bucket", "bucket sizes")
            need(bucket != {}, f"{at}.bucket", "expected at least one bucket dim")
            shared = sorted(set(bucket) & set(dims))
            need(not shared, f"{at}.bucket", f"dim(s) {', '.join(shared)} also in the entry's dims")
            found = (tuple(sorted(dims)), tuple(bucket))
            names = names or found
            need(found == names, at, f"dims {', '.join(found[0]) or 'none'} and bucket dims {', '.join(found[1])}; "
                                     f"the kernel's first entry has {', '.join(names[0]) or 'none'} and "
                                     f"{', '.join(names[1])}")
            need(isinstance(b["config"], dict) and b["config"] != {}, f"{at}.config",
                 f"expected a non-empty JSON object, got {_show(b['config'])}")
            for k, v in b["config"].items():
                need(_json_int(v), f"{at}.config.{k}", f"expected an int, got {_show(v)}")
            for name, zero_ok in _TIMINGS:
                v = b[name]
                need(_number(v) and (v >= 0 if zero_ok else v > 0), f"{at}.{name}",
                     f"expected a finite {'number >= 0' if zero_ok else 'positive number'}, got {_show(v)}")
            buckets.append(GenericBucket(dict(bucket), dict(b["config"]), float(b["speedup"])))
        repeated = sorted({str(b.bucket) for b in buckets if sum(o.bucket == b.bucket for o in buckets) > 1})
        need(not repeated, f"{where}.buckets", f"bucket {', '.join(repeated)} appears twice")
        key = (kernel, dims_key(dims), e["dtype"], form)
        need(key not in table.generic, where, f"({dims}, {e['dtype']}, form {form!r}) appears twice")
        table.generic[key] = buckets
        table.bucket_dims[kernel] = names[1]
    expected = GENERIC_KERNELS.get(kernel)
    need(expected is None or names is None or names[1] == expected, f"kernels.{kernel}",
         f"bucket dims {', '.join(names[1]) if names else ''}; expected {', '.join(expected or ())}, in this order (the "
         "bucket rule narrows them one after the other)")


def _json_int(v: object) -> bool:
    """A JSON integer: json.loads gives bool for true/false (an int subclass) and float for 64.0."""
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: object) -> bool:
    """A finite JSON number: json.loads reads NaN and Infinity, which compare as no timing should."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer past any float: no timing either
        return False


def _iso_time(v: object) -> bool:
    if not isinstance(v, str):
        return False
    try:
        datetime.fromisoformat(v)
    except ValueError:
        return False
    return True


def _show(v: object) -> str:
    """A value for a message: JSON's spelling (true, null, NaN), strings quoted as the rest of the messages quote them,
    cut short."""
    try:
        text = repr(v) if isinstance(v, str) else json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


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
    """Check the table parses, then replace `path` atomically (`replace_file`)."""
    path = Path(path)
    parse_table(table, f"table to write to {path}")
    if path.is_dir():
        raise ValueError(f"lookup table {path}: is a directory; expected the path of a .json file")
    text = json.dumps(table, indent=1, allow_nan=False) + "\n"  # fails, if at all, before a file exists
    replace_file(path, text)


def replace_file(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically: a reader never sees half a file, and any failure leaves the old file
    as it was and no temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder: two writers never share a temporary file, and the rename stays atomic.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # a full disk can surface only here; the old file must still be whole then
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from the other users of a shared folder
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
