"""`nvc export-table` (the database's winners as the runtime's lookup table) and `nvc show` (them, or a table)."""
from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from autotune.export import build_table, merge_tables
from db.models import WARM_START
from db.queries import best_results, search_split, split_summary
from db.storage import Recorder, StorageError, open_engine, redact, storage_errors
from kernels.config import Config
from nvc_cli.options import one_line_error, storage_option
from search_spaces.plugin import check_table
from tuning_table import check_gpu_arg, load_table, parse_table, read_table_file, write_table
from tuning_table.format import KERNELS, LookupTable


# What `show` adds to each result: where its config came from, the sampler's gain over the warm starts, and when the
# study found its best.
ORIGIN_COLUMNS = ["from", "gain%", "at"]
_FROM = {WARM_START: "warm"}


@click.command("export-table")
@click.option("--gpu", "gpu_name", default=None, help="normalized GPU name [default: the only one stored]")
@click.option("--out", default=None, help="output file [default: tables/<gpu>.json]")
@click.option("--merge", is_flag=True,
              help="keep the buckets of the table already at --out that the database has no results for")
@storage_option
def export_table(gpu_name: str | None, out: str | None, merge: bool, storage: str) -> None:
    """Write the versioned JSON lookup table of one GPU's best configs."""
    try:
        gpu_name = check_gpu_arg(gpu_name) if gpu_name else None
        if out is not None and not out.strip():  # Path("") is the current folder
            raise ValueError(f"--out {out!r}: expected the table's file, such as tables/{gpu_name or '<gpu>'}.json")
        if out is not None and Path(out).is_dir():
            raise ValueError(f"--out {out}: is a folder; expected the table's file, such as "
                             f"{Path(out) / (gpu_name or '<gpu>')}.json")
        with storage_errors(storage):
            engine = open_engine(storage, create=False, writes=True)
            table = build_table(_of_gpu(best_results(engine), gpu_name, storage))
            path = Path(out or f"tables/{table['gpu']}.json")
            merged = merge and path.exists()
            if merged:
                table = merge_tables(read_table_file(path), table, f"lookup table {path}")
            check_table(parse_table(table, f"table to write to {path}"), f"table to write to {path}")
            # The row first, the file (checked, then replaced atomically) while its transaction is open, the commit
            # last: whatever fails leaves the file as it was and no row, except a commit failing after the file was
            # replaced, which leaves a valid table that the database does not list (the other order could list a
            # table that was never written).
            try:
                Recorder(engine).add_exported_table(table["gpu"], str(path), table,
                                                    write=lambda: write_table(table, path))
            except OSError as e:  # its own words name a temporary file the user never asked for
                raise ValueError(f"--out {path}: cannot write the table ({e.strerror or e}); nothing was written or "
                                 f"recorded") from None
    except (ValueError, StorageError, OSError) as e:
        raise one_line_error(e) from None
    n = sum(len(e["buckets"]) for entries in table["kernels"].values() for e in entries)
    click.echo(f"{'merged into' if merged else 'wrote'} {path}: {n} tuned (shape, M) entries for {table['gpu']} "
               f"(torch {table['torch']}, triton {table['triton']})")


@click.command()
@click.option("--gpu", "gpu_name", default=None, help="only this normalized GPU name")
@click.option("--table", "table_path", default=None, help="show a lookup table file instead of the database")
@storage_option
def show(gpu_name: str | None, table_path: str | None, storage: str) -> None:
    """Print the best config of every tuned shape."""
    try:
        if table_path:
            table = load_table(table_path)
            if gpu_name and table.gpu != check_gpu_arg(gpu_name):
                raise ValueError(f"--gpu {gpu_name}: {table_path} is a table of {table.gpu}")
            click.echo(f"{table_path}: {table.gpu_name} ({table.gpu}), torch {table.torch}, triton {table.triton}, "
                       f"created {table.created}")
            check_table(table, f"lookup table {table_path}")
            rows = [dict(kernel=k, dtype=d, K=K, N=N, M=b.M, config=_short(b.config), speedup=b.speedup,
                         epilogue=b.epilogue.form) for (k, K, N, d), buckets in table.entries.items() for b in buckets]
            if rows:
                click.echo(pd.DataFrame(rows).to_string(index=False))
            _show_generic_entries(table)
            return
        gpu_name = check_gpu_arg(gpu_name) if gpu_name else None
        with storage_errors(storage):
            engine = open_engine(storage, create=False)
            best = _of_gpu(best_results(engine), gpu_name, storage)
            split = search_split(engine, gpu_name)
    except (ValueError, StorageError) as e:
        raise one_line_error(e) from None
    if best.empty:
        click.echo("no finished studies yet")
        return
    best = best.merge(_origin_columns(split), on="study_name", how="left")
    generic = best[~best["kernel"].isin(KERNELS)]
    best = best[best["kernel"].isin(KERNELS)].rename(columns={"form": "epilogue"})
    if not best.empty:
        _show_gemm_results(best)
    if not generic.empty:
        generic = generic.assign(dims=generic["dims"].map(_sizes), config=generic["config"].map(_sizes),
                                 us=generic["median_us"].round(2), spread=generic["spread_us"].round(2),
                                 base_us=generic["baseline_us"].round(2), speedup=generic["speedup"].round(3),
                                 gbps=generic["gbps"].round(0))
        click.echo(generic[["gpu", "kernel", "dtype", "dims", "config", "us", "spread", "base_us", "speedup", "gbps",
                            "form", *ORIGIN_COLUMNS]].to_string(index=False))
    click.echo(f"{split_summary(split)} (from: where the best config came from; gain%: the sampler's best trial "
               f"against the best warm start; at: how many of the study's trials it took to first reach its best)")



def _origin_columns(split: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "study_name": split["study_name"],
        "from": [_FROM.get(o, o) if isinstance(o, str) else "unknown" for o in split["best_from"]],
        "gain%": [f"{100 * g:+.1f}" if pd.notna(g) else "-" for g in split["gain"]],
        "at": [f"{a}/{n}" if pd.notna(a) else "-" for a, n in zip(split["best_step"], split["trials"])]})


def _show_gemm_results(best: pd.DataFrame) -> None:
    best = best.assign(config=best["config"].map(_short_dict), us=best["median_us"].round(2),
                       spread=best["spread_us"].round(2), base_us=best["baseline_us"].round(2),
                       speedup=best["speedup"].round(3), tflops=best["tflops"].round(1), gbps=best["gbps"].round(0))
    cols = ["gpu", "kernel", "dtype", "K", "N", "M", "config", "us", "spread", "base_us", "speedup", "tflops", "gbps",
            "epilogue", *ORIGIN_COLUMNS]
    click.echo(best[cols].to_string(index=False))


def _of_gpu(best: pd.DataFrame, gpu: str | None, storage: str) -> pd.DataFrame:
    """The results of --gpu (all without it); none while other GPUs have some is an error naming those."""
    if gpu is None:
        return best
    mine = best[best["gpu"] == gpu].reset_index(drop=True)
    if mine.empty and not best.empty:
        raise ValueError(f"no finished tuning results for {gpu} in {redact(storage)}; it has results for: "
                         f"{', '.join(sorted(best['gpu'].unique()))}")
    return mine


def _short(c: Config) -> str:
    """BLOCK_MxBLOCK_NxBLOCK_K (marked gemv below tl.dot's 16 rows: the GEMV-like tile), warps, stages, GROUP_M,
    SPLIT_K, SUMSQ_IN_LOOP, TMA, EVICT."""
    gemv = " gemv" if c.BLOCK_M < 16 else ""
    return (f"{c.BLOCK_M}x{c.BLOCK_N}x{c.BLOCK_K}{gemv} w{c.num_warps} s{c.num_stages} g{c.GROUP_M} sk{c.SPLIT_K} "
            f"ssq{c.SUMSQ_IN_LOOP} tma{c.TMA} ev{c.EVICT}")


def _short_dict(d: dict) -> str:
    return _short(Config.from_dict(d))


def _sizes(d: dict) -> str:
    """A plugin's dims or config as name=value pairs."""
    return " ".join(f"{k}={v}" for k, v in d.items())


def _show_generic_entries(table: LookupTable) -> None:
    """The buckets of the table's generic (plugin) kernels, one row each."""
    rows = [dict(kernel=k, dtype=d, dims=_sizes({**dict(fixed), **b.bucket}), config=_sizes(b.config),
                 speedup=b.speedup, form=form) for (k, fixed, d, form), buckets in table.generic.items() for b in buckets]
    if rows:
        click.echo(pd.DataFrame(rows).to_string(index=False))
