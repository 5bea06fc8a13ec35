"""Small lookup tables written by the tests, in the format of tuning_table/format.py, for the running torch/Triton."""
import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import torch
import triton

from tuning_table import gpu_short_name
from tuning_table.format import FORMAT, FORMAT_VERSION
from kernels.config import Config

# One program per 64 x 256 tile: Triton's CPU interpreter is slow per program, not per element.
INTERPRETER_CONFIG = Config(BLOCK_M=64, BLOCK_N=256, BLOCK_K=64, num_warps=4, num_stages=1, GROUP_M=1, SUMSQ_IN_LOOP=1)


# The running card's name where there is one, so that a table written for the test is not another GPU's.
RUNNING_GPU = (gpu_short_name(torch.device("cuda")) if torch.cuda.is_available() else None) or "h100"


def table(entries: list[dict], gpu: str = RUNNING_GPU, torch_version: str = torch.__version__,
          triton_version: str = triton.__version__, linear: list[dict] | None = None) -> dict:
    """`entries` of the fused kernel; `linear`: entries of the norm-free GEMM (kernel "linear"), if any."""
    kernels = {"rms_norm_linear": entries, **({"linear": linear} if linear is not None else {})}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "gpu": gpu, "gpu_name": f"NVIDIA {gpu.upper()}",
            "torch": torch_version, "triton": triton_version, "created": "2026-11-27T00:00:00+00:00",
            "kernels": kernels}


def entry(K: int, N: int, buckets: dict[int, Config], dtype: str = "float32") -> dict:
    return {"K": K, "N": N, "dtype": dtype, "buckets": [
        {"M": m, "config": c.to_dict(), "latency_us": 1.0, "spread_us": 0.01, "baseline_us": 1.5, "speedup": 1.5}
        for m, c in buckets.items()]}


def write(data: dict, path: Path) -> str:
    path.write_text(json.dumps(data))
    return str(path)


@functools.cache
def interpreter_table() -> str:
    """A float32 table for the tiny test models (hidden size 64), fast in the interpreter."""
    folder = Path(tempfile.mkdtemp(prefix="nanovllm-tables-"))
    atexit.register(shutil.rmtree, folder, True)
    return write(table([entry(64, n, {1: INTERPRETER_CONFIG}) for n in (128, 256, 512)]), folder / "cpu.json")
