"""Input validation for the fused RMSNorm+Linear wrapper: every error names the argument at fault."""
from __future__ import annotations

import os

import torch

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _check_vector(name: str, t: torch.Tensor | None, length: int, x: torch.Tensor) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(t).__name__}")
    if t.shape != (length,):
        raise ValueError(f"{name}: expected shape ({length},), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name}: on {t.device}, but x is on {x.device}")


def check_like(name: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, x: torch.Tensor) -> None:
    """t is a tensor of this shape and dtype on x's device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name}: on {t.device}, but x is on {x.device}")


def check_row_sumsq(row_sumsq: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None) -> None:
    """Precomputed row statistics: fp32, one per row of x or a stack of partial sums, and x must already hold
    the residual."""
    if residual is not None:
        raise ValueError("row_sumsq: x already holds the residual when its row statistics are given; "
                         "expected residual=None")
    rows = tuple(x.shape[:-1])
    shape = rows if not isinstance(row_sumsq, torch.Tensor) or row_sumsq.dim() == len(rows) else \
        (row_sumsq.shape[0], *rows)
    check_like("row_sumsq", row_sumsq, shape, torch.float32, x)


def check_inputs(x, weight, bias, norm_weight, residual) -> None:
    """Raise TypeError/ValueError naming the first argument that the kernel cannot take."""
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"x: dtype {x.dtype} not supported; expected one of {_DTYPES}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected shape (..., K) with K > 0, got {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1] or weight.shape[0] == 0:
        raise ValueError(f"weight: expected shape (N, K={x.shape[-1]}), got {tuple(weight.shape)}")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight: dtype {weight.dtype} differs from x's {x.dtype}")
    if weight.device != x.device:
        raise ValueError(f"weight: on {weight.device}, but x is on {x.device}")
    if residual is not None:
        check_like("residual", residual, tuple(x.shape), x.dtype, x)
    _check_vector("bias", bias, weight.shape[0], x)
    if bias is not None and bias.dtype != x.dtype:  # as F.linear refuses it
        raise TypeError(f"bias: dtype {bias.dtype} differs from x's {x.dtype}")
    _check_vector("norm_weight", norm_weight, x.shape[-1], x)
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(f"x: on {x.device}; the Triton kernel needs a CUDA tensor (or TRITON_INTERPRET=1)")
