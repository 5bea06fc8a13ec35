"""The GPU a tune runs on: normalized names (h100, a100, ...) and what is recorded about it."""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass

import torch
import triton

# Checked in order: the first pattern found in the lower-cased device name wins.
_GPU_PATTERNS = (
    ("gh200", r"gh200"), ("h200", r"h200"), ("h100", r"h100"), ("h800", r"h800"), ("h20", r"\bh20\b"),
    ("b200", r"b200"), ("a100", r"a100"), ("a800", r"a800"), ("a10g", r"a10g"), ("a10", r"\ba10\b"),
    ("l40s", r"l40s"), ("l40", r"\bl40\b"), ("l4", r"\bl4\b"), ("v100", r"v100"), ("t4", r"\bt4\b"),
    ("rtx4090", r"rtx 4090"), ("rtx4080", r"rtx 4080"), ("rtx3090", r"rtx 3090"), ("rtx5090", r"rtx 5090"),
    ("rtx6000ada", r"rtx 6000 ada"), ("a6000", r"rtx a6000"),
)
KNOWN_GPUS = tuple(short for short, _ in _GPU_PATTERNS)
# Test hook: CPU tests run the whole pipeline on this many pretend GPUs (timed by FakeTimer).
FAKE_GPUS_ENV = "NVC_TEST_FAKE_GPUS"


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


@dataclass(frozen=True)
class GpuInfo:
    name: str
    short_name: str
    sm_count: int
    memory_bytes: int
    driver: str
    torch: str
    triton: str
    l2_bytes: int

    def to_record(self) -> dict:
        return asdict(self)


def fake_gpu_count() -> int:
    return int(os.environ.get(FAKE_GPUS_ENV, "0"))


def gpu_count() -> int:
    return fake_gpu_count() or torch.cuda.device_count()


def detect_gpu(index: int = 0) -> GpuInfo:
    """Describe visible CUDA device `index`; RuntimeError with one clear line when there is none."""
    if fake_gpu_count():
        from autotune.testing import fake_gpu
        return fake_gpu()
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible: tuning needs an NVIDIA GPU (check nvidia-smi and "
                           "CUDA_VISIBLE_DEVICES)")
    props = torch.cuda.get_device_properties(index)
    return GpuInfo(name=props.name, short_name=normalize_gpu_name(props.name), sm_count=props.multi_processor_count,
                   memory_bytes=props.total_memory, driver=_driver_version(), torch=torch.__version__,
                   triton=triton.__version__, l2_bytes=getattr(props, "L2_cache_size", 50 << 20))


def _driver_version() -> str:
    try:
        import pynvml  # shipped with torch's CUDA wheels as nvidia-ml-py
        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # noqa: BLE001 - the driver version is informative only
        return f"cuda {torch.version.cuda}"
