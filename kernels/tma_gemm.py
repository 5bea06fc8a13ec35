"""The Hopper main loop of the fused RMSNorm+Linear (Config.TMA = 1 or 2): tiles loaded through TMA descriptors.

It computes what the pointer kernel computes with SUMSQ_IN_LOOP=0 and SPLIT_K=1: a plain GEMM over h (x,
or x + residual from the row-statistics prologue), each row scaled by 1/RMS in the epilogue (unless
HAS_NORM=False: the plain linear of kernels/linear.py), then the bias.
TMA copies whole tiles into shared memory without the threads computing addresses, and a persistent
grid (TMA=2: one program per SM walking the tiles) starts the next tile's loads under this tile's
epilogue. On an H200 this took llama-7b GEMMs at M >= 1024 from 0.76-0.91x of cuBLAS to 0.94-1.02x
(scripts/exp_tma.py, docs/PERF_NOTES.md). Needs sm_90+ and rows aligned to 16 bytes; the wrapper checks.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.config import Config, device_has_tma, tma_rows_aligned
from kernels.pdl import pdl_launch_next, pdl_wait_first
from kernels.tiles import grouped_tile

_TMA_ALIGN = 16  # bytes: TMA needs 16-byte aligned base addresses and row strides


@triton.jit
def _tma_gemm_kernel(a_desc, w_desc, o_desc, ss_ptr, b_ptr, M, N, K, eps,
                     HAS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SUBTILE: tl.constexpr,
                     SS_PARTS: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_wait_first(USE_PDL)
    start = tl.program_id(0)
    # Read from the grid, not passed in: an int argument would be specialized (== 1, % 16), and the compile
    # pool's small problem would then build another binary than the one the tuner times.
    num_programs = tl.num_programs(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    # The epilogue recomputes its tile from a second counter (as Triton's persistent-matmul tutorial does):
    # the flattened loop's pipeliner mishandles one value used both in the prologue and the epilogue.
    tile_e = start - num_programs
    for tile in tl.range(start, num_pid_m * num_pid_n, num_programs, flatten=True):
        pid_m, pid_n = grouped_tile(tile, num_pid_m, num_pid_n, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(k_tiles):
            # Past M, N or K the descriptors read zeros, so ragged edges need no masks.
            a = a_desc.load([pid_m * BLOCK_M, kb * BLOCK_K])
            w = w_desc.load([pid_n * BLOCK_N, kb * BLOCK_K])  # W's own [N, K] layout, K contiguous
            if IEEE:
                acc = tl.dot(a, w.T, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, w.T, acc)
        tile_e += num_programs
        pid_m, pid_n = grouped_tile(tile_e, num_pid_m, num_pid_n, GROUP_M)
        if HAS_NORM:  # constexpr: False is the plain GEMM of kernels/linear.py, ss_ptr unused
            offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            sumsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for s in tl.static_range(SS_PARTS):  # partial sums of squares (kernels/row_stats.py)
                sumsq += tl.load(ss_ptr + s * M + offs_m, mask=offs_m < M, other=0.0)
            acc = acc * (1.0 / tl.sqrt(sumsq / K + eps))[:, None]
        if HAS_BIAS:
            offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        # The store clips rows and columns past M and N.
        if SUBTILE:  # two half tiles: halves the shared-memory staging buffer of a 128x256 output tile
            acc0, acc1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
            o_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc0.to(o_desc.dtype))
            o_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N + BLOCK_N // 2], acc1.to(o_desc.dtype))
        else:
            o_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(o_desc.dtype))
    pdl_launch_next(USE_PDL)


def tma_ready(*tensors: torch.Tensor) -> bool:
    """Whether TMA can address these 2-D tensors: unit inner stride, 16-byte aligned base and rows."""
    return all(t.stride(-1) == 1 and t.data_ptr() % _TMA_ALIGN == 0 and (t.stride(0) * t.element_size()) % _TMA_ALIGN == 0
               for t in tensors)


def tma_problem(x2: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                norm_weight: torch.Tensor | None) -> str | None:
    """Why the TMA main loop cannot take these inputs, or None."""
    if not device_has_tma(x2.device):
        return f"{x2.device} is sm_{''.join(map(str, torch.cuda.get_device_capability(x2.device)))}; TMA needs sm_90+"
    if norm_weight is not None:
        return "norm_weight must be folded into the weight (fold_norm_weight) for TMA"
    K, N = weight.shape[1], weight.shape[0]
    if not tma_rows_aligned(K, N, weight.element_size()):
        return f"K={K}, N={N}: rows of h and out must be multiples of 16 bytes for TMA"
    # With a residual the GEMM reads h, which the prologue writes contiguous; without one it reads x itself.
    if not tma_ready(weight, *([x2] if residual is None else [])):
        return "x and weight need unit-stride, 16-byte aligned rows for TMA"
    return None


def launch_tma_gemm(a: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, ss: torch.Tensor,
                    bias: torch.Tensor | None, eps: float, config: Config, num_sms: int,
                    *, has_norm: bool, pdl: dict, ss_parts: int = 1) -> None:
    """out = (a @ weight.T) [* 1/RMS from ss, ss_parts rows of partial sums, when has_norm] + bias, through TMA
    descriptors.
    pdl: kernels.pdl.pdl_launch_args of the device (computed once by the caller)."""
    M, K = a.shape
    N = weight.shape[0]
    subtile = config.BLOCK_N >= 256
    a_desc = TensorDescriptor.from_tensor(a, [config.BLOCK_M, config.BLOCK_K])
    w_desc = TensorDescriptor.from_tensor(weight, [config.BLOCK_N, config.BLOCK_K])
    o_desc = TensorDescriptor.from_tensor(out, [config.BLOCK_M, config.BLOCK_N // 2 if subtile else config.BLOCK_N])
    tiles = triton.cdiv(M, config.BLOCK_M) * triton.cdiv(N, config.BLOCK_N)
    programs = min(num_sms, tiles) if config.TMA == 2 else tiles
    _tma_gemm_kernel[(programs,)](
        a_desc, w_desc, o_desc, ss, bias if bias is not None else ss, M, N, K, float(eps),
        HAS_NORM=has_norm, HAS_BIAS=bias is not None, IEEE=a.dtype == torch.float32, BLOCK_M=config.BLOCK_M,
        BLOCK_N=config.BLOCK_N, BLOCK_K=config.BLOCK_K, GROUP_M=config.GROUP_M, SUBTILE=subtile,
        SS_PARTS=ss_parts, num_warps=config.num_warps, num_stages=config.num_stages, **pdl)
