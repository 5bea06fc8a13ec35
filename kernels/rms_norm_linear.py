"""Fused RMSNorm + Linear: out = rmsnorm(x [+ residual]) @ W.T + b in one pass over x and W.

The 1/RMS of a row is a scalar, so it commutes with the matrix product: the sum of squares is
accumulated in fp32 inside the K loop, from the same A tiles the product reads, and the scale is
applied in the epilogue before the bias. The normalized activations never touch memory.
With SPLIT_K > 1 each split writes its partial product and partial sum of squares to an fp32
workspace, and a small second kernel reduces both, scales and adds the bias.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.config import Config, default_config, device_smem_limit
from kernels.reference import baseline_rms_norm_linear, fold_norm_weight, reference_rms_norm_linear

__all__ = ["Config", "fused_rms_norm_linear", "fold_norm_weight", "reference_rms_norm_linear",
           "baseline_rms_norm_linear"]

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _rms_norm_linear_kernel(
    x_ptr, r_ptr, w_ptr, g_ptr, b_ptr, out_ptr, h_ptr, ws_ptr, ss_ptr,
    M, N, K, eps,
    stride_xm, stride_xk, stride_rm, stride_rk, stride_wn, stride_wk,
    stride_om, stride_hm,
    HAS_RESIDUAL: tl.constexpr, HAS_NORM_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped ordering: GROUP_M row blocks share each weight tile while it is still in L2.
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    group_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_m
    pid_n = (pid % group) // group_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # Only one column of programs writes the new residual stream, so each element is written once.
    write_h = HAS_RESIDUAL and pid_n == 0

    k_blocks = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_blocks, SPLIT_K)
    kb_start = pid_k * per_split
    kb_end = tl.minimum(kb_start + per_split, k_blocks)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    sumsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for kb in range(kb_start, kb_end):
        offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        if EVEN_K:
            mask_a = mask_m[:, None]
            mask_b = mask_n[None, :]
        else:
            mask_k = offs_k < K
            mask_a = mask_m[:, None] & mask_k[None, :]
            mask_b = mask_k[:, None] & mask_n[None, :]
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk, mask=mask_a, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(r_ptr + offs_m[:, None] * stride_rm + offs_k[None, :] * stride_rk, mask=mask_a, other=0.0)
            # Round the sum to the input dtype, as the unfused `x + residual` does.
            a = (a.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
            if write_h:
                tl.store(h_ptr + offs_m[:, None] * stride_hm + offs_k[None, :], a, mask=mask_a)
        a32 = a.to(tl.float32)
        sumsq += tl.sum(a32 * a32, axis=1)
        if HAS_NORM_WEIGHT:
            if EVEN_K:
                g = tl.load(g_ptr + offs_k).to(tl.float32)
            else:
                g = tl.load(g_ptr + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
            a = (a32 * g[None, :]).to(x_ptr.dtype.element_ty)
        b = tl.load(w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn, mask=mask_b, other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)

    if SPLIT_K == 1:
        rstd = 1.0 / tl.sqrt(sumsq / K + eps)
        acc = acc * rstd[:, None]
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])
    else:
        ws_ptrs = ws_ptr + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :]
        tl.store(ws_ptrs, acc, mask=mask_m[:, None] & mask_n[None, :])
        if pid_n == 0:
            tl.store(ss_ptr + pid_k * M + offs_m, sumsq, mask=mask_m)


@triton.jit
def _split_k_reduce_kernel(
    ws_ptr, ss_ptr, b_ptr, out_ptr, M, N, K, eps, stride_om,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask = mask_m[:, None] & (offs_n[None, :] < N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    sumsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(ws_ptr + (s * M + offs_m[:, None]) * N + offs_n[None, :], mask=mask, other=0.0)
        sumsq += tl.load(ss_ptr + s * M + offs_m, mask=mask_m, other=0.0)
    acc = acc * (1.0 / tl.sqrt(sumsq / K + eps))[:, None]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


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


def _check_inputs(x, weight, bias, norm_weight, residual) -> None:
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
        if not isinstance(residual, torch.Tensor):
            raise TypeError(f"residual: expected a torch.Tensor or None, got {type(residual).__name__}")
        if residual.shape != x.shape:
            raise ValueError(f"residual: expected the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
        if residual.dtype != x.dtype:
            raise TypeError(f"residual: dtype {residual.dtype} differs from x's {x.dtype}")
        if residual.device != x.device:
            raise ValueError(f"residual: on {residual.device}, but x is on {x.device}")
    _check_vector("bias", bias, weight.shape[0], x)
    _check_vector("norm_weight", norm_weight, x.shape[-1], x)
    if x.device.type != "cuda" and not _interpreting():
        raise ValueError(f"x: on {x.device}; the Triton kernel needs a CUDA tensor (or TRITON_INTERPRET=1)")


def _empty(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Every buffer the wrapper allocates comes from here, so tests can poison them with NaN."""
    return torch.empty(shape, device=like.device, dtype=dtype)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def fused_rms_norm_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    norm_weight: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    config: Config | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """rmsnorm(x [+ residual]) @ weight.T + bias; with `residual`, returns (out, x + residual)."""
    _check_inputs(x, weight, bias, norm_weight, residual)
    if not eps > 0:
        raise ValueError(f"eps: expected a positive float, got {eps!r}")
    K = x.shape[-1]
    N = weight.shape[0]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    if config is None:
        config = default_config(M, N, K, x.device)
    elif not isinstance(config, Config):
        raise TypeError(f"config: expected a kernels.Config or None, got {type(config).__name__}")
    config.validate(K=K, elem_bytes=x.element_size(), smem_limit=device_smem_limit(x.device))

    # The per-column vectors are indexed with unit stride in the kernel; copies only when strided.
    bias = bias.contiguous() if bias is not None else None
    norm_weight = norm_weight.contiguous() if norm_weight is not None else None
    out = _empty((M, N), x, x.dtype)
    r2 = residual.reshape(-1, K) if residual is not None else x2
    h = _empty((M, K), x, x.dtype) if residual is not None else out
    if M == 0:
        return (out.reshape(*lead, N), h.reshape(*lead, K)) if residual is not None else out.reshape(*lead, N)
    split = config.SPLIT_K
    ws = _empty((split, M, N), x, torch.float32) if split > 1 else out
    ss = _empty((split, M), x, torch.float32) if split > 1 else out
    grid = (triton.cdiv(M, config.BLOCK_M) * triton.cdiv(N, config.BLOCK_N), split)
    _rms_norm_linear_kernel[grid](
        x2, r2, weight, norm_weight if norm_weight is not None else x2, bias if bias is not None else x2,
        out, h, ws, ss, M, N, K, float(eps),
        x2.stride(0), x2.stride(1), r2.stride(0), r2.stride(1), weight.stride(0), weight.stride(1),
        out.stride(0), h.stride(0),
        HAS_RESIDUAL=residual is not None, HAS_NORM_WEIGHT=norm_weight is not None, HAS_BIAS=bias is not None,
        EVEN_K=K % config.BLOCK_K == 0, IEEE=x.dtype == torch.float32,
        BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, BLOCK_K=config.BLOCK_K,
        GROUP_M=config.GROUP_M, SPLIT_K=split, num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if split > 1:
        rb_m, rb_n = 16, 128
        _split_k_reduce_kernel[(triton.cdiv(M, rb_m), triton.cdiv(N, rb_n))](
            ws, ss, bias if bias is not None else ws, out, M, N, K, float(eps), out.stride(0),
            HAS_BIAS=bias is not None, SPLIT_K=split, BLOCK_M=rb_m, BLOCK_N=rb_n, num_warps=4,
        )
    out = out.reshape(*lead, N)
    return (out, h.reshape(*lead, K)) if residual is not None else out
