"""An RMSNorm and the linear layer it feeds, run as one fused kernel once the norm's gain is in the weight (with the
MLP's SiLU-and-mul, or the attention's rotary embedding and KV-cache write, in its epilogue); and the plain linear
before it, whose epilogue hands that norm its row statistics."""
import torch

from kernels.epilogue import GATED, PLAIN, Epilogue
from kernels.linear import linear_residual
from kernels.paired import RotaryKV
from kernels.rms_norm_linear import fold_norm_weight, fused_rms_norm_linear
from nanovllm.layers.activation import SiluAndMul
from nanovllm.layers.attention import Attention
from nanovllm.layers.layernorm import RMSNorm
from nanovllm.layers.linear import LinearBase, RowParallelLinear, triton_runs
from nanovllm.utils.context import get_context
from tuning_table import Launch


def fuse_norm_linear(norm: RMSNorm, linear: LinearBase, launches: list[Launch | None]) -> None:
    """Move the norm's gain into `linear`'s weight (once, after loading) and route its site through the kernel.

    `launches[M]` is what the site runs for a batch of M rows (tuning_table.select_configs for the site's epilogue),
    None where the separate norm and cuBLAS GEMM are faster; with the gain folded, that path runs the norm with a
    unit gain.
    """
    linear.weight.data = fold_norm_weight(linear.weight.data, norm.weight.data)
    norm.weight.data.fill_(1.0)
    linear.launches = launches


def _launch(linear: LinearBase, x: torch.Tensor) -> Launch | None:
    launch = linear.launches[x.shape[0]] if linear.launches is not None else None
    return launch if launch is not None and launch.kernel == "rms_norm_linear" and triton_runs(x) else None


def linear_add_residual(linear: RowParallelLinear, x: torch.Tensor,
                        residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """linear(x) on its way into the residual stream, as (hidden, residual, sumsq) for the next `norm_linear`.

    Where the tuned plain GEMM runs at this M, its last kernel adds the residual and sums the squares of each row
    (kernels/linear.py): (h, None, sums), and the next fused site launches no row-statistics kernel. Elsewhere
    (F.linear), and wherever the linear is split across tensor-parallel ranks (a rank's product is a partial sum, whose
    residual and row statistics wait for the all-reduce): (linear(x), residual, None), and the next norm adds the
    residual itself.
    """
    launch = linear.launches[x.shape[0]] if linear.launches is not None else None
    if launch is None or launch.kernel != "linear" or not triton_runs(x) or linear.tp_size > 1:
        return linear(x), residual, None
    h, sumsq = linear_residual(x, linear.weight, linear.bias, residual, config=launch.config, trusted=True)
    return h, None, sumsq


def norm_linear(norm: RMSNorm, linear: LinearBase, x: torch.Tensor, residual: torch.Tensor | None,
                sumsq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """linear(norm(x + residual)) and the new residual stream x + residual (x alone when residual is None).
    With `sumsq` (from `linear_add_residual`), x already is the stream and these are its rows' sums of squares."""
    launch = _launch(linear, x)
    if launch is None:  # the separate path computes the same
        if residual is None:
            return linear(norm(x)), x
        y, residual = norm(x, residual)
        return linear(y), residual
    return _fused(norm, linear, x, residual, sumsq, launch, PLAIN)


def norm_linear_silu(norm: RMSNorm, linear: LinearBase, act: SiluAndMul, x: torch.Tensor, residual: torch.Tensor | None,
                     sumsq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """act(linear(norm(x + residual))) for the MLP's stacked gate/up projection, and the new residual stream, as
    `norm_linear`. One kernel where this M's launch has the gated epilogue: SiLU-and-mul in the fused kernel's
    epilogue, the [M, 2I] projection never in memory."""
    launch = _launch(linear, x)
    if launch is None or launch.epilogue != GATED:
        y, residual = norm_linear(norm, linear, x, residual, sumsq)
        return act(y), residual
    return _fused(norm, linear, x, residual, sumsq, launch, GATED)


def norm_linear_rotary(norm: RMSNorm, linear: LinearBase, attn: Attention, positions: torch.Tensor, x: torch.Tensor,
                       residual: torch.Tensor | None,
                       sumsq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The attention's input: `norm_linear` of the QKV projection as (qkv, residual, False), or, where this M's
    launch has the rotary epilogue, one kernel that also rotates q and k and writes k and v into `attn`'s KV
    cache: (q [M, heads, head_dim], residual, True), for `attn.attend`."""
    launch = _launch(linear, x)
    if launch is None or launch.epilogue.kind != "rotary":
        return *norm_linear(norm, linear, x, residual, sumsq), False
    ctx = get_context()
    kv = RotaryKV(positions, attn.rotary_emb.cos_sin_cache, ctx.slot_mapping, attn.k_cache, attn.v_cache,
                  attn.num_heads)
    return *_fused(norm, linear, x, residual, sumsq, launch, launch.epilogue, kv), True


def _fused(norm: RMSNorm, linear: LinearBase, x: torch.Tensor, residual: torch.Tensor | None,
           sumsq: torch.Tensor | None, launch: Launch, epilogue: Epilogue,
           rotary: RotaryKV | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    kwargs = dict(epilogue=epilogue, rotary=rotary, config=launch.config, trusted=True)
    if sumsq is not None:
        return fused_rms_norm_linear(x, linear.weight, linear.bias, norm.eps, row_sumsq=sumsq, **kwargs), x
    out = fused_rms_norm_linear(x, linear.weight, linear.bias, norm.eps, residual=residual, **kwargs)
    return out if residual is not None else (out, x)
