"""The model's linear layers (plain, stacked [gate; up], stacked [q; k; v]) with their checkpoint loaders; a plain
one runs the tuned norm-free GEMM where its launches say so."""
import os

import torch
import torch.nn.functional as F
from torch import nn

from kernels.linear import linear as tuned_linear
from tuning_table import Launch


def triton_runs(x: torch.Tensor) -> bool:
    """The tuned Triton kernels run on CUDA, and on a CPU only through Triton's interpreter."""
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


class Linear(nn.Module):
    """y = x W^T + b, whose checkpoint tensors are copied in by `weight_loader`."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        # What this layer launches for a batch of M rows, launches[M], from tuning_table.select_configs (None: the
        # separate path): set by ModelRunner, the fused RMSNorm kernel's once the norm before it is folded in
        # (fused_norm_linear.fuse_norm_linear), the norm-free GEMM's on a plain linear (o_proj, down_proj).
        self.launches: list[Launch | None] | None = None

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        param.data.copy_(loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x is (M, K): an O(1) index, resolved at load, so CUDA graphs capture whichever path M takes.
        launch = self.launches[x.shape[0]] if self.launches is not None else None
        if launch is None or launch.kernel != "linear" or not triton_runs(x):
            return F.linear(x, self.weight, self.bias)
        return tuned_linear(x, self.weight, self.bias, config=launch.config, trusted=True)


class MergedLinear(Linear):
    """Several projections of the same input stacked along the output (gate and up of the MLP)."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False):
        super().__init__(input_size, sum(output_sizes), bias)
        self.output_sizes = output_sizes

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int) -> None:
        offset = sum(self.output_sizes[:shard_id])
        param.data.narrow(0, offset, self.output_sizes[shard_id]).copy_(loaded)


class QKVLinear(MergedLinear):
    """The query, key and value projections in one matrix; shard ids are "q", "k", "v"."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        sizes = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
        super().__init__(hidden_size, sizes, bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str) -> None:
        super().weight_loader(param, loaded, "qkv".index(shard_id))
