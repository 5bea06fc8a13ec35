"""RMSNorm with an optional fused residual add, one program per row, with HF Llama's rounding."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.pdl import pdl_launch_args, pdl_wait
from kernels.validation import FLOAT_DTYPES, check_shape, check_tensor


@triton.jit
def _rms_norm_kernel(
    x_ptr, r_ptr, w_ptr, y_ptr, h_ptr, eps,
    stride_x, stride_r, stride_y, stride_h, N,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    h = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + row * stride_r + offs, mask=mask, other=0.0)
        # The residual stream is kept in the activation dtype, as `x + residual` in HF rounds it.
        h = (h.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(h_ptr + row * stride_h + offs, h, mask=mask)
    h32 = h.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(h32 * h32, axis=0) / N + eps)
    normed = (h32 * inv_rms).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_y + offs, (normed * w).to(y_ptr.dtype.element_ty), mask=mask)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float,
                    residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    check_tensor("x", x, 2, FLOAT_DTYPES, x.device)
    num_rows, hidden = x.shape
    check_tensor("weight", weight, 1, FLOAT_DTYPES, x.device)
    check_shape("weight", weight, (hidden,))
    if residual is not None:
        check_tensor("residual", residual, 2, (x.dtype,), x.device)
        check_shape("residual", residual, tuple(x.shape))
    # weight * normed promotes like torch does (a bf16 model keeps bf16; fp32 weights give fp32).
    y = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    h = torch.empty_like(x) if residual is not None else None
    if num_rows > 0:
        block = triton.next_power_of_2(hidden)
        _rms_norm_kernel[(num_rows,)](
            x, residual if residual is not None else x, weight, y, h if h is not None else y, eps,
            x.stride(0), residual.stride(0) if residual is not None else 0, y.stride(0),
            h.stride(0) if h is not None else 0, hidden,
            HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=min(max(block // 256, 1), 16),
            **pdl_launch_args(x.device),
        )
    return y if residual is None else (y, h)
