"""The GPU a tune runs on: what is recorded about it (GpuInfo) and how a CUDA device is described (detect_gpu)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import triton

from tuning_table.gpus import normalize_gpu_name


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


def detect_gpu(index: int = 0) -> GpuInfo:
    """Describe visible CUDA device `index`; RuntimeError with one clear line when there is none."""
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
