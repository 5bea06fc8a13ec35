"""Sampling the next token from logits: temperature, top-k and top-p (kernels/sampling.py on the GPU)."""
import torch
from torch import nn

from kernels import ops


class Sampler(nn.Module):
    def forward(self, logits: torch.Tensor, temperatures: torch.Tensor, top_ks: torch.Tensor, top_ps: torch.Tensor,
                generators: list[torch.Generator | None] | None = None, *, filtered: bool | None = None) -> torch.Tensor:
        return ops.sample(logits, temperatures, top_ks, top_ps, generators, filtered=filtered)
