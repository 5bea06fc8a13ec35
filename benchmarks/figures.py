"""The CSV of one figure: every sample of each measured quantity, its median and range, and what measured it.

One row per quantity (an engine's ms/token, a grid point's tokens/s, a ratio, ...): the key columns that name it,
its samples in the order they were taken (';'-separated), their count, median, min and max, and the run's
environment (commit, the tuning table's path and sha256 as the runtime loaded it, GPU, driver, torch, triton,
transformers, CUDA). benchmarks/reproduce.py writes them; scripts/render_figures.py reads them. A figure's file is
written whole or not at all (a temporary file renamed into place), so a file that exists is a finished figure.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import os
import re
import statistics
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["figure", "engine", "model", "variant", "batch_size", "seq_len", "metric", "unit"]
STATS = ["n", "median", "min", "max", "samples"]
ENVIRONMENT = ["run", "commit", "tuning_table", "table_sha256", "gpu", "driver", "torch", "triton", "transformers",
               "cuda"]
COLUMNS = KEYS + STATS + ENVIRONMENT


def git_commit(root: Path = ROOT) -> str | None:
    """HEAD of the checkout, '+dirty' when tracked files differ from it; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def gpu_identity() -> tuple[str, str]:
    """(device name, NVIDIA driver version) of the current CUDA device; the driver 'unknown' without nvidia-smi."""
    index = torch.cuda.current_device()
    try:
        out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return torch.cuda.get_device_name(index), out or "unknown"


def environment(run: str, commit: str, gpu: str, driver: str, table: Path | None) -> dict:
    """The ENVIRONMENT columns of a run; `table` is the file the tuned runtime loads (None: no table)."""
    return {"run": run, "commit": commit, "tuning_table": os.path.relpath(table, ROOT) if table else "none",
            "table_sha256": sha256(table) if table else "none", "gpu": gpu, "driver": driver,
            "torch": torch.__version__, "triton": version("triton"), "transformers": version("transformers"),
            "cuda": torch.version.cuda or "none"}


def gpu_folder(gpu: str) -> str:
    """A folder name for a device name: 'NVIDIA H200' -> 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9.]+", "-", gpu.lower()).strip("-")


def quantity(samples: list[float], **keys) -> dict:
    """A row of a figure: `keys` (some of KEYS) and the statistics of `samples` (at least one)."""
    if not samples:
        raise ValueError(f"{keys}: no samples")
    return {**keys, "n": len(samples), "median": statistics.median(samples), "min": min(samples),
            "max": max(samples), "samples": ";".join(f"{v:.6g}" for v in samples)}


def write_figure(path: Path, rows: list[dict], env: dict) -> None:
    """All rows of a figure, each with the run's environment, into `path` at once."""
    unknown = {c for row in rows for c in row} - set(COLUMNS)
    if unknown:
        raise ValueError(f"{path.name}: unknown columns {sorted(unknown)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({**row, **env} for row in rows)
    os.replace(partial, path)
