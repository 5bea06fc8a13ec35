"""SiLU-and-multiply of a fused gate/up projection: silu(x[:, :I]) * x[:, I:]."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.pdl import pdl_launch_args, pdl_wait
from kernels.validation import FLOAT_DTYPES, check_tensor


@triton.jit
def _silu_and_mul_kernel(x_ptr, y_ptr, stride_x, stride_y, I, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < I
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + I + offs, mask=mask, other=0.0).to(tl.float32)
    # HF rounds silu(gate) to the activation dtype before the product; so do we.
    act = (gate / (1.0 + tl.exp(-gate))).to(y_ptr.dtype.element_ty).to(tl.float32)
    tl.store(y_ptr + row * stride_y + offs, (act * up).to(y_ptr.dtype.element_ty), mask=mask)


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    check_tensor("x", x, 2, FLOAT_DTYPES, x.device)
    if x.shape[1] % 2:
        raise ValueError(f"x must have an even last dimension [T, 2I], got shape {tuple(x.shape)}")
    num_rows, inter = x.shape[0], x.shape[1] // 2
    y = torch.empty((num_rows, inter), dtype=x.dtype, device=x.device)
    if num_rows > 0 and inter > 0:
        block = min(triton.next_power_of_2(inter), 1024)
        _silu_and_mul_kernel[(num_rows, triton.cdiv(inter, block))](x, y, x.stride(0), y.stride(0), inter,
                                                                   BLOCK=block, **pdl_launch_args(x.device))
    return y
