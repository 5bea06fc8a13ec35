"""Normalized GPU names (h100, h200, a100, ...): what a lookup table, a study and `--gpu` are keyed by."""
from __future__ import annotations

import re

import torch

# Checked in order: the first pattern found in the lower-cased device name wins.
_GPU_PATTERNS = (
    ("gh200", r"gh200"), ("h200", r"h200"), ("h100", r"h100"), ("h800", r"h800"), ("h20", r"\bh20\b"),
    ("b200", r"b200"), ("a100", r"a100"), ("a800", r"a800"), ("a10g", r"a10g"), ("a10", r"\ba10\b"),
    ("l40s", r"l40s"), ("l40", r"\bl40\b"), ("l4", r"\bl4\b"), ("v100", r"v100"), ("t4", r"\bt4\b"),
    ("rtx4090", r"rtx 4090"), ("rtx4080", r"rtx 4080"), ("rtx3090", r"rtx 3090"), ("rtx5090", r"rtx 5090"),
    ("rtx6000ada", r"rtx 6000 ada"), ("a6000", r"rtx a6000"),
)
KNOWN_GPUS = tuple(short for short, _ in _GPU_PATTERNS)


def normalize_gpu_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; ValueError for a device this project does not know."""
    low = name.lower()
    for short, pattern in _GPU_PATTERNS:
        if re.search(pattern, low):
            return short
    raise ValueError(f"GPU {name!r}: not a known device; known: {', '.join(KNOWN_GPUS)}")


def check_gpu_arg(name: str) -> str:
    """Validate a --gpu value: one of the normalized names."""
    short = name.strip().lower()
    if short not in KNOWN_GPUS:
        raise ValueError(f"--gpu {name!r}: unknown GPU name; expected one of {', '.join(KNOWN_GPUS)}")
    return short


def gpu_short_name(device: torch.device) -> str | None:
    """h100, h200, ... for a CUDA device this project knows; None otherwise."""
    if device.type != "cuda":
        return None
    try:
        return normalize_gpu_name(torch.cuda.get_device_name(device))
    except ValueError:
        return None
