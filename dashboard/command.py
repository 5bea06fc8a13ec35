"""`nvc dashboard`: write the page of what the tuning database holds."""
from __future__ import annotations

from pathlib import Path

import click

from dashboard.bench import read_bench_csvs
from dashboard.data import DashboardData, load
from dashboard.page import build_page
from db.storage import DEFAULT_URL, StorageError, check_persistent, optuna_storage, redact, storage_errors
from tuning_table import check_gpu_arg
from tuning_table.format import replace_file


def _bench_gpu(gpu: str | None, data: DashboardData) -> str | None:
    """The GPU that bench_search.py's CSVs are taken to come from: --gpu, else the only GPU stored."""
    stored = data.gpus["gpu"].unique()
    return gpu or (stored[0] if len(stored) == 1 else None)


@click.command("dashboard")
@click.option("--storage", default=DEFAULT_URL, show_default=True,
              help="SQLAlchemy URL: sqlite:///file.db or postgresql://user@host/db")
@click.option("--gpu", "gpu_name", default=None, help="only this normalized GPU name (h100, a100, ...)")
@click.option("--out", default="dashboard.html", show_default=True, help="the HTML file to write")
@click.option("--bench-csv", "bench_csvs", multiple=True,
              help="compare.csv or search_curves.csv of benchmarks/bench_search.py, measured on --gpu "
                   "(or on the only GPU stored); repeatable")
def dashboard_command(storage: str, gpu_name: str | None, out: str, bench_csvs: tuple[str, ...]) -> None:
    """Write one self-contained HTML page (it opens offline) of the tuning results and the searches."""
    try:
        check_persistent(storage)  # an in-memory database holds nothing to show
        gpu = check_gpu_arg(gpu_name) if gpu_name else None
        with storage_errors(storage):
            data = load(storage, gpu)
            bench = read_bench_csvs(list(bench_csvs), _bench_gpu(gpu, data))
            page = build_page(data, bench, None if data.empty else optuna_storage(storage))
        path = Path(out)
        if path.is_dir():
            raise ValueError(f"--out {out}: is a folder; expected the path of the HTML file to write")
        try:
            replace_file(path, page)
        except OSError as e:
            # A folder of the path that is a file fails its mkdir: name it, or "File exists" would puzzle (the
            # temporary file a failed write names is no name of the user's).
            where = f": {e.filename}" if e.filename and Path(e.filename) in path.parents else ""
            raise ValueError(f"--out {out}: cannot write the page ({e.strerror or e}{where}); nothing was written") \
                from None
    except (ValueError, StorageError, OSError) as e:
        raise click.ClickException(str(e).strip().splitlines()[0]) from None
    size = f"{path.stat().st_size / 2**20:.1f} MB"
    if data.empty:
        where = f" for GPU {gpu}" if gpu else ""
        click.echo(f"{redact(storage)} holds no tuning results{where} yet; wrote {path} ({size}), which says so")
    else:
        click.echo(f"wrote {path} ({size}): {len(data.studies)} studies, {int(data.studies['trials'].sum())} trials, "
                   f"GPUs {', '.join(sorted(data.gpus['gpu'].unique()))}")
