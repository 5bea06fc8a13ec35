"""RMSNorm, with the residual add fused in."""
import torch
from torch import nn

from kernels import ops


class RMSNorm(nn.Module):
    """RMSNorm; given a residual it first adds it (fused) and returns (normalized, new residual)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if residual is None:
            return ops.rms_norm(x, self.weight, self.eps).view(shape)
        y, h = ops.rms_norm(x, self.weight, self.eps, residual.reshape(-1, shape[-1]))
        return y.view(shape), h.view(shape)
