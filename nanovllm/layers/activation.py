"""SiLU-and-mul, the MLP's activation over the stacked [gate; up] projection."""
import torch
from torch import nn

from kernels import ops


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.silu_and_mul(x)
