"""nano-vllm-coconut's command line: tune kernels per GPU and shape, export lookup tables, show results.

    python cli.py tune --gpu h100 --shapes llama-7b
    python cli.py export-table --gpu h100 --out tables/h100.json
    python cli.py export-table --gpu h200 --merge          # add to tables/h200.json, keeping its other buckets
    python cli.py show
    python cli.py list-shapes
    python cli.py dashboard --out dashboard.html
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from autotune.device import check_gpu_arg, detect_gpu, gpu_count
from autotune.samplers import SAMPLERS
from autotune.table import build_table, load_table, merge_tables, read_table_file, write_table
from autotune.tuner import TuneSettings
from autotune.workers import make_jobs, run_workers
from dashboard.command import dashboard_command
from db.queries import best_results
from db.storage import DEFAULT_URL, Recorder, StorageError, open_engine, optuna_storage
from kernels.config import Config
from search_spaces import DTYPES, Problem, get_space
from search_spaces.shapes import PRESETS, SITE_KERNELS, parse_m_buckets, parse_shapes, sites_from_config

_storage_option = click.option("--storage", default=DEFAULT_URL, show_default=True,
                               help="SQLAlchemy URL: sqlite:///file.db or postgresql://user@host/db")


def _fail(e: Exception) -> click.ClickException:
    return click.ClickException(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


@click.group()
def main() -> None:
    """Autotune the fused RMSNorm+Linear kernel (and its norm-free GEMM, --kernel linear) per GPU and shape."""


@main.command()
@click.option("--gpu", "gpu_name", required=True, help="normalized GPU name; must match the device (h100, a100, ...)")
@click.option("--shapes", required=True, help="preset, config.json path or NxK, comma-separated")
@click.option("--m", "m_spec", default=None, help="M buckets, comma-separated [default: 1,2,4,...,16384]")
@click.option("--dtype", default="bfloat16", show_default=True, type=click.Choice(sorted(DTYPES)))
@click.option("--kernel", default="rms_norm_linear", show_default=True,
              help="rms_norm_linear (the fused sites) or linear (the plain o_proj and down_proj GEMMs)")
@click.option("--trials", default=TuneSettings.trials, show_default=True, type=int,
              help="finished trials per study (a rerun resumes up to this)")
@click.option("--timeout", default=None, type=float, help="seconds per study [default: none]")
@click.option("--sampler", default="tpe", show_default=True, type=click.Choice(SAMPLERS))
@_storage_option
@click.option("--workers", default=1, show_default=True, type=int, help="one process per visible GPU")
def tune(gpu_name: str, shapes: str, m_spec: str | None, dtype: str, kernel: str, trials: int,
         timeout: float | None, sampler: str, storage: str, workers: int) -> None:
    """Find the fastest correct config of every (shape, M bucket) on this GPU."""
    try:
        gpu_name = check_gpu_arg(gpu_name)
        get_space(kernel)
        sites = parse_shapes(shapes, kernel)
        buckets = parse_m_buckets(m_spec)
        settings = TuneSettings(sampler=sampler, trials=trials, timeout_s=timeout)
        if workers < 1:
            raise ValueError(f"--workers {workers}: expected >= 1")
        visible = gpu_count()
        if visible == 0:
            detect_gpu()  # raises the one-line "no CUDA device" error
        if workers > visible:
            raise ValueError(f"--workers {workers}: only {visible} GPU(s) visible")
        for i in range(workers):
            info = detect_gpu(i)
            if info.short_name != gpu_name:
                raise ValueError(f"--gpu {gpu_name}: device {i} is {info.name!r} ({info.short_name})")
        open_engine(storage)
        optuna_storage(storage)
        problems = [Problem(m, s.K, s.N, dtype, s.epilogue, s.head_dim, s.kv_heads) for s in sites for m in buckets]
    except (ValueError, RuntimeError, StorageError) as e:
        raise _fail(e) from None
    click.echo(f"tuning {len(problems)} studies ({len(sites)} shapes x {len(buckets)} M buckets) on "
               f"{workers} x {gpu_name}, {trials} trials each, into {storage}", err=True)
    try:
        run_workers(make_jobs(storage, kernel, problems, settings, workers))
    except KeyboardInterrupt:
        click.echo("interrupted: finished trials are stored; rerun the same command to resume", err=True)
        sys.exit(130)
    except (RuntimeError, StorageError) as e:
        raise _fail(e) from None
    click.echo("done; see `cli.py show` and `cli.py export-table`", err=True)


@main.command("export-table")
@click.option("--gpu", "gpu_name", default=None, help="normalized GPU name [default: the only one stored]")
@click.option("--out", default=None, help="output file [default: tables/<gpu>.json]")
@click.option("--merge", is_flag=True,
              help="keep the buckets of the table already at --out that the database has no results for")
@_storage_option
def export_table(gpu_name: str | None, out: str | None, merge: bool, storage: str) -> None:
    """Write the versioned JSON lookup table of one GPU's best configs."""
    try:
        gpu_name = check_gpu_arg(gpu_name) if gpu_name else None
        engine = open_engine(storage, create=False)
        table = build_table(best_results(engine, gpu_name))
        path = Path(out or f"tables/{table['gpu']}.json")
        merged = merge and path.exists()
        if merged:
            table = merge_tables(read_table_file(path), table, f"lookup table {path}")
        write_table(table, path)
        Recorder(engine).add_exported_table(table["gpu"], str(path), table)
    except (ValueError, StorageError, OSError) as e:
        raise _fail(e) from None
    n = sum(len(e["buckets"]) for entries in table["kernels"].values() for e in entries)
    click.echo(f"{'merged into' if merged else 'wrote'} {path}: {n} tuned (shape, M) entries for {table['gpu']} "
               f"(torch {table['torch']}, triton {table['triton']})")


@main.command()
@click.option("--gpu", "gpu_name", default=None, help="only this normalized GPU name")
@click.option("--table", "table_path", default=None, help="show a lookup table file instead of the database")
@_storage_option
def show(gpu_name: str | None, table_path: str | None, storage: str) -> None:
    """Print the best config of every tuned shape."""
    import pandas as pd

    try:
        if table_path:
            table = load_table(table_path)
            click.echo(f"{table_path}: {table.gpu_name} ({table.gpu}), torch {table.torch}, triton {table.triton}, "
                       f"created {table.created}")
            rows = [dict(kernel=k, dtype=d, K=K, N=N, M=m, config=_short(c), speedup=x, epilogue=f)
                    for (k, K, N, d), buckets in table.entries.items() for m, c, x, f in buckets]
            click.echo(pd.DataFrame(rows).to_string(index=False))
            return
        gpu_name = check_gpu_arg(gpu_name) if gpu_name else None
        best = best_results(open_engine(storage, create=False), gpu_name)
    except (ValueError, StorageError) as e:
        raise _fail(e) from None
    if best.empty:
        click.echo("no finished studies yet")
        return
    best = best.assign(config=best["config"].map(_short_dict), us=best["median_us"].round(2),
                       spread=best["spread_us"].round(2), base_us=best["baseline_us"].round(2),
                       speedup=best["speedup"].round(3), tflops=best["tflops"].round(1), gbps=best["gbps"].round(0))
    cols = ["gpu", "kernel", "dtype", "K", "N", "M", "config", "us", "spread", "base_us", "speedup", "tflops", "gbps",
            "epilogue"]
    click.echo(best[cols].to_string(index=False))


@main.command("list-shapes")
def list_shapes() -> None:
    """Print the shape presets: NxK of each RMSNorm+Linear site, and of each plain linear (--kernel linear)."""
    for name, cfg in PRESETS.items():
        sites = {k: ", ".join(f"{s.name} {s.N}x{s.K}" + (f" ({s.epilogue})" if s.epilogue else "")
                              for s in sites_from_config(cfg, name, k)) for k in SITE_KERNELS}
        click.echo(f"{name:12s} {sites['rms_norm_linear']}; linear: {sites['linear']}")


def _short(c: Config) -> str:
    return (f"{c.BLOCK_M}x{c.BLOCK_N}x{c.BLOCK_K} w{c.num_warps} s{c.num_stages} g{c.GROUP_M} sk{c.SPLIT_K} "
            f"ssq{c.SUMSQ_IN_LOOP} tma{c.TMA}")


def _short_dict(d: dict) -> str:
    return _short(Config.from_dict(d))


main.add_command(dashboard_command)

if __name__ == "__main__":
    main()
