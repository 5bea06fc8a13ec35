"""An RMSNorm and the linear layer it feeds, run as one fused kernel once the norm's gain is in the weight (with the
MLP's SiLU-and-mul, or the attention's rotary embedding and KV-cache write, in its epilogue); and the plain linear
before it, whose epilogue hands that norm its row statistics."""
import torch

from kernels.config import Config
from kernels.linear import linear_residual
from kernels.paired import RotaryKV, gated_config, rotary_config
from kernels.rms_norm_linear import fold_norm_weight, fused_rms_norm_linear
from nanovllm.layers.activation import SiluAndMul
from nanovllm.layers.attention import Attention
from nanovllm.layers.layernorm import RMSNorm
from nanovllm.layers.linear import Linear, triton_runs
from nanovllm.utils.context import get_context


def fuse_norm_linear(norm: RMSNorm, linear: Linear, configs: list[Config | None]) -> None:
    """Move the norm's gain into `linear`'s weight (once, after loading) and route `norm_linear` through the kernel.

    `configs[M]` is the kernel config for a batch of M rows, None where the separate norm and cuBLAS GEMM are
    faster (nanovllm.utils.tuning.resolve_configs); with the gain folded, that path runs the norm with a unit gain.
    """
    linear.weight.data = fold_norm_weight(linear.weight.data, norm.weight.data)
    norm.weight.data.fill_(1.0)
    linear.norm_configs = configs


def fuse_silu(linear: Linear) -> None:
    """For the MLP's stacked gate/up projection, after `fuse_norm_linear`: where its config can apply SiLU-and-mul
    in the epilogue (kernels.paired.gated_config), `norm_linear_silu` runs one kernel for norm, GEMM and activation."""
    linear.gated_configs = [gated_config(c) if c is not None else None for c in linear.norm_configs]


def fuse_rotary(linear: Linear, head_dim: int) -> None:
    """For the attention's stacked QKV projection, after `fuse_norm_linear` (not where q and k are normalized
    before the rotary embedding, as in Qwen3): where its config can rotate and write the KV cache in the epilogue
    (kernels.paired.rotary_config), `norm_linear_rotary` runs one kernel for norm, GEMM, rotary and cache write."""
    linear.rotary_configs = [rotary_config(c, head_dim) if c is not None else None for c in linear.norm_configs]


def linear_add_residual(linear: Linear, x: torch.Tensor,
                        residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """linear(x) on its way into the residual stream, as (hidden, residual, sumsq) for the next `norm_linear`.

    Where the tuned plain GEMM runs at this M, its last kernel adds the residual and sums the squares of each row
    (kernels/linear.py): (h, None, sums), and the next fused site launches no row-statistics kernel. Elsewhere
    (F.linear): (linear(x), residual, None), and the next norm adds the residual itself.
    """
    config = linear.linear_configs[x.shape[0]] if linear.linear_configs is not None else None
    if config is None or not triton_runs(x):
        return linear(x), residual, None
    h, sumsq = linear_residual(x, linear.weight, linear.bias, residual, config=config)
    return h, None, sumsq


def norm_linear(norm: RMSNorm, linear: Linear, x: torch.Tensor, residual: torch.Tensor | None,
                sumsq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """linear(norm(x + residual)) and the new residual stream x + residual (x alone when residual is None).
    With `sumsq` (from `linear_add_residual`), x already is the stream and these are its rows' sums of squares."""
    config = linear.norm_configs[x.shape[0]] if linear.norm_configs is not None else None
    # Where the kernel cannot run, the separate path computes the same.
    if config is None or not triton_runs(x):
        if residual is None:
            return linear(norm(x)), x
        y, residual = norm(x, residual)
        return linear(y), residual
    return _fused(norm, linear, x, residual, sumsq, config, gated=False)


def norm_linear_silu(norm: RMSNorm, linear: Linear, act: SiluAndMul, x: torch.Tensor, residual: torch.Tensor | None,
                     sumsq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """act(linear(norm(x + residual))) for the MLP's stacked gate/up projection, and the new residual stream, as
    `norm_linear`. One kernel where `linear.gated_configs[M]` is set: SiLU-and-mul in the fused kernel's epilogue,
    the [M, 2I] projection never in memory."""
    config = linear.gated_configs[x.shape[0]] if linear.gated_configs is not None else None
    if config is None or not triton_runs(x):
        y, residual = norm_linear(norm, linear, x, residual, sumsq)
        return act(y), residual
    return _fused(norm, linear, x, residual, sumsq, config, gated=True)


def norm_linear_rotary(norm: RMSNorm, linear: Linear, attn: Attention, positions: torch.Tensor, x: torch.Tensor,
                       residual: torch.Tensor | None,
                       sumsq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The attention's input: `norm_linear` of the QKV projection as (qkv, residual, False), or, where
    `linear.rotary_configs[M]` is set, one kernel that also rotates q and k and writes k and v into `attn`'s KV
    cache: (q [M, heads, head_dim], residual, True), for `attn.attend`."""
    config = linear.rotary_configs[x.shape[0]] if linear.rotary_configs is not None else None
    if config is None or not triton_runs(x):
        return *norm_linear(norm, linear, x, residual, sumsq), False
    ctx = get_context()
    rotary = RotaryKV(positions, attn.rotary_emb.cos_sin_cache, ctx.slot_mapping, attn.k_cache, attn.v_cache,
                      attn.num_heads)
    return *_fused(norm, linear, x, residual, sumsq, config, rotary=rotary), True


def _fused(norm: RMSNorm, linear: Linear, x: torch.Tensor, residual: torch.Tensor | None, sumsq: torch.Tensor | None,
           config: Config, gated: bool = False, rotary: RotaryKV | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    epilogue = dict(silu_and_mul=gated, rotary=rotary, config=config)
    if sumsq is not None:
        return fused_rms_norm_linear(x, linear.weight, linear.bias, norm.eps, row_sumsq=sumsq, **epilogue), x
    out = fused_rms_norm_linear(x, linear.weight, linear.bias, norm.eps, residual=residual, **epilogue)
    return out if residual is not None else (out, x)
