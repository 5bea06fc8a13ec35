"""Which lookup table the runtime reads: discovery, the tables shipped in the package, and the version check.

Discovery, first match wins:
1. the `tuning_table` argument: a path, or False for none (the learned fallback, tuning_table/learned.py);
2. the NANOVLLM_TUNING_TABLE environment variable (a path);
3. the shipped table of the detected card, `<gpu>.json` among the package's data (`shipped_table`; the repository's
   tables/ folder, which the wheel carries as tuning_table/tables); on a CPU there is no card and no table.
"""
from __future__ import annotations

import os
import warnings
from importlib import resources
from pathlib import Path

import torch
import triton

from tuning_table.format import LookupTable, load_table
from tuning_table.gpus import gpu_short_name

TUNING_TABLE_ENV = "NANOVLLM_TUNING_TABLE"


def shipped_table(gpu: str) -> Path | None:
    """The table shipped for a normalized GPU name, or None."""
    path = resources.files("tuning_table").joinpath("tables", f"{gpu}.json")
    return Path(str(path)) if path.is_file() else None


def named_table(tuning_table: str | os.PathLike | bool | None) -> tuple[str, Path] | None:
    """The table file the user named by discovery's first two rules, with what named it ("tuning_table" or
    "$NANOVLLM_TUNING_TABLE"), for errors to say; None where none is named."""
    if tuning_table is False or tuning_table is None and not os.environ.get(TUNING_TABLE_ENV):
        return None
    if tuning_table is not None:
        return "tuning_table", Path(tuning_table)
    return f"${TUNING_TABLE_ENV}", Path(os.environ[TUNING_TABLE_ENV])


def load_named_table(tuning_table: str | os.PathLike | bool | None) -> tuple[Path, LookupTable] | None:
    """The table the user named, read; its ValueError begins with what named it. None where none is named."""
    named = named_table(tuning_table)
    if named is None:
        return None
    source, path = named
    try:
        return path, load_table(path)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def find_table(tuning_table: str | os.PathLike | bool | None, device: torch.device) -> Path | None:
    """The table file to use (module docstring), or None for the learned fallback's configs."""
    if tuning_table is False:
        return None
    named = named_table(tuning_table)
    if named is not None:
        return named[1]
    if device.type != "cuda":
        return None
    gpu = gpu_short_name(device)
    path = shipped_table(gpu) if gpu else None
    if path is None:
        card = gpu or f"{torch.cuda.get_device_name(device)!r}, a card tuning_table.gpus does not know,"
        warnings.warn(f"no tuning table shipped for {card} and {TUNING_TABLE_ENV} unset: the fused RMSNorm+Linear "
                      "kernel runs the configs of the nearest shapes tuned on other cards (tuning_table/learned.py)",
                      stacklevel=2)
    return path


def open_table(tuning_table: str | os.PathLike | bool | None, device: torch.device,
               named: tuple[Path, LookupTable] | None = None) -> tuple[Path | None, LookupTable | None]:
    """(path, table) by the discovery order above, with one warning when the table was tuned on another GPU or
    under other torch/Triton; (None, None) for no table. `named`: what load_named_table already read."""
    named = named or load_named_table(tuning_table)
    path = named[0] if named else find_table(tuning_table, device)
    if path is None:
        return None, None
    table = named[1] if named else load_table(path)
    running = {"torch": torch.__version__, "triton": triton.__version__}
    if device.type == "cuda":
        running["gpu"] = gpu_short_name(device) or torch.cuda.get_device_name(device)
    differ = [f"{what} {getattr(table, what)} (running {now})" for what, now in running.items()
              if getattr(table, what) != now]
    if differ:
        warnings.warn(f"tuning table {path} was tuned for {', '.join(differ)}: its configs are used, but may not "
                      "be the fastest here", stacklevel=2)
    return path, table
