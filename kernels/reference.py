"""What the fused kernel is checked against (a float64 oracle) and what users run today (the baseline)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fold_norm_weight(weight: torch.Tensor, norm_weight: torch.Tensor) -> torch.Tensor:
    """W*[n, k] = W[n, k] * g[k]: the RMSNorm gain folded into the next linear layer (FlashNorm)."""
    if weight.dim() != 2 or norm_weight.shape != (weight.shape[1],):
        raise ValueError(
            f"norm_weight: expected shape ({weight.shape[-1]},) to fold into weight {tuple(weight.shape)}, "
            f"got {tuple(norm_weight.shape)}")
    return (weight.float() * norm_weight.float()[None, :]).to(weight.dtype)


def reference_rms_norm_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    norm_weight: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The same function in float64 on the CPU; returns float64 tensors."""
    h = x.double().cpu()
    if residual is not None:
        h = h + residual.double().cpu()
    y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if norm_weight is not None:
        y = y * norm_weight.double().cpu()
    out = y @ weight.double().cpu().T
    if bias is not None:
        out = out + bias.double().cpu()
    return (out, h) if residual is not None else out


def baseline_rms_norm_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    norm_weight: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """F.rms_norm (after the residual add) then F.linear: the unfused path of today's runtimes."""
    h = x + residual if residual is not None else x
    y = F.rms_norm(h, (h.shape[-1],), norm_weight.to(h.dtype) if norm_weight is not None else None, eps)
    out = F.linear(y, weight, bias.to(h.dtype) if bias is not None else None)
    return (out, h) if residual is not None else out
