"""Fused RMSNorm + Linear: out = rmsnorm(x [+ residual]) @ W.T + b, the normalized rows never in memory.

The wrapper of the GEMM of kernels/gemm.py with its norm compiled in (that file says where the row statistics come
from), and the MLP's SiLU-and-mul or the attention's rotary embedding and KV-cache write in its epilogue.
"""
from __future__ import annotations

import torch

from kernels.checks import check_inputs, check_row_sumsq
from kernels.config import Config
from kernels.gemm import launch
from kernels.epilogue import PLAIN, Epilogue
from kernels.paired import RotaryKV
from kernels.reference import baseline_rms_norm_linear, fold_norm_weight, reference_rms_norm_linear

__all__ = ["Config", "fused_rms_norm_linear", "fold_norm_weight", "reference_rms_norm_linear",
           "baseline_rms_norm_linear"]


def fused_rms_norm_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    norm_weight: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    row_sumsq: torch.Tensor | None = None,
    epilogue: Epilogue = PLAIN,
    rotary: RotaryKV | None = None,
    config: Config | None = None,
    trusted: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """rmsnorm(x [+ residual]) @ weight.T + bias; with `residual`, returns (out, x + residual).

    row_sumsq: x's rows' fp32 sums of squares, x.shape[:-1], or partial sums to add, (parts, *x.shape[:-1]),
    already computed (kernels/linear.py `linear_residual` returns them with x): the kernel then skips its
    row-statistics prologue. Not with `residual`.
    epilogue (kernels/epilogue.py): gated: weight (and bias) stack [gate; up], 2I rows; out is silu(gate) * up,
    (..., I). rotary: weight stacks [q; k; v] heads; out is q (..., num_q_heads, head_dim) rotated by the
    positions, and k (rotated) and v go into the KV cache of `rotary` instead (kernels/paired.py). Both apply
    their epilogue with SPLIT_K=1, TMA=0 and BLOCK_N counting column pairs (Epilogue.launched converts a config
    tuned for the stacked product).
    trusted: `config` was validated for this shape and device already (tuning_table.select_configs).
    """
    check_inputs(x, weight, bias, norm_weight, residual)
    if not eps > 0:
        raise ValueError(f"eps: expected a positive float, got {eps!r}")
    K, N, lead = x.shape[-1], weight.shape[0], x.shape[:-1]
    x2 = x.reshape(-1, K)
    if row_sumsq is not None:
        check_row_sumsq(row_sumsq, x, residual)
        row_sumsq = row_sumsq.reshape(-1, x2.shape[0]).contiguous()  # (parts, M), read with unit stride
    if not isinstance(epilogue, Epilogue):
        raise TypeError(f"epilogue: expected a kernels.epilogue.Epilogue, got {type(epilogue).__name__}")
    if (rotary is not None) != (epilogue.kind == "rotary"):
        raise ValueError(f"rotary: expected the KV-cache buffers exactly with a rotary epilogue, got epilogue "
                         f"{epilogue} and rotary={'given' if rotary is not None else None}")
    if epilogue.kind == "gated" and N % 2:
        raise ValueError(f"weight: a gated epilogue needs [gate; up] stacked, an even number of rows; got N={N}")
    if rotary is not None:
        rotary.check(x2, weight)
        if rotary.epilogue != epilogue:
            raise ValueError(f"rotary: its buffers serve {rotary.epilogue}, the epilogue is {epilogue}")
    out, h = launch(x2, weight, bias, config, eps=eps, norm_weight=norm_weight,
                    residual=residual.reshape(-1, K) if residual is not None else None, row_sumsq=row_sumsq,
                    epilogue=epilogue, rotary=rotary, trusted=trusted)
    out = out.reshape(*lead, *((rotary.num_q_heads, rotary.head_dim) if rotary is not None else out.shape[-1:]))
    return (out, h.reshape(*lead, K)) if residual is not None else out
