"""The model's linear layers, split across tensor-parallel ranks as in nano-vLLM, with their checkpoint loaders:
column-parallel ones (QKV, gate/up) hold their rank's rows of the weight, its share of the output; row-parallel ones
(o_proj, down_proj) its columns, and all-reduce their partial products. With one rank each is the whole layer. Every
one runs the tuned norm-free GEMM on its own shard where its launches say so."""
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from kernels.linear import linear as tuned_linear
from nanovllm.utils.loader import copy_weight
from nanovllm.utils.parallel import tp_rank, tp_size
from tuning_table import Launch


def triton_runs(x: torch.Tensor) -> bool:
    """The tuned Triton kernels run on CUDA, and on a CPU only through Triton's interpreter."""
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


class LinearBase(nn.Module):
    """y = x W^T + b with this rank's shard of W (output_size, input_size), filled by `weight_loader`."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank(), tp_size()
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        # What this layer launches for a batch of M rows, launches[M], from tuning_table.select_configs (None: the
        # separate path): set by ModelRunner, the fused RMSNorm kernel's once the norm before it is folded in
        # (fused_norm_linear.fuse_norm_linear), the norm-free GEMM's on a row-parallel linear (o_proj, down_proj).
        self.launches: list[Launch | None] | None = None

    def product(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # x is (M, K): an O(1) index, resolved at load, so CUDA graphs capture whichever path M takes.
        launch = self.launches[x.shape[0]] if self.launches is not None else None
        if launch is None or launch.kernel != "linear" or not triton_runs(x):
            return F.linear(x, self.weight, bias)
        return tuned_linear(x, self.weight, bias, config=launch.config, trusted=True)


class ColumnParallelLinear(LinearBase):
    """A rank holds output rows [rank * N/tp, (rank + 1) * N/tp) of the weight and the bias."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__(input_size, output_size // tp_size(), bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        copy_weight(param.data, loaded.tensor_split(self.tp_size, 0)[self.tp_rank])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x, self.bias)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Projections of the same input stacked along the output (gate and up of the MLP), each split across the ranks:
    a rank holds [its gate rows; its up rows], so that the SiLU-and-mul of its columns is its own."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False):
        super().__init__(input_size, sum(output_sizes), bias)
        self.output_sizes = output_sizes

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int) -> None:
        offset, size = sum(self.output_sizes[:shard_id]) // self.tp_size, self.output_sizes[shard_id] // self.tp_size
        copy_weight(param.data.narrow(0, offset, size), loaded.tensor_split(self.tp_size, 0)[self.tp_rank])


class QKVParallelLinear(ColumnParallelLinear):
    """The query, key and value projections in one matrix, split by heads: a rank holds [its q heads; its k heads; its
    v heads]. With fewer KV heads than ranks, each KV head is replicated on tp / kv_heads ranks (as in vLLM), the ranks
    of the q heads that read it. Shard ids are "q", "k", "v"."""

    def __init__(self, hidden_size: int, head_dim: int, total_num_heads: int, total_num_kv_heads: int,
                 bias: bool = False):
        num_heads, num_kv_heads = total_num_heads // tp_size(), max(1, total_num_kv_heads // tp_size())
        LinearBase.__init__(self, hidden_size, (num_heads + 2 * num_kv_heads) * head_dim, bias)
        self.head_dim, self.num_heads, self.num_kv_heads = head_dim, num_heads, num_kv_heads
        # The KV heads come in this many distinct shards: tp of them, fewer where they are replicated.
        self.num_kv_shards = total_num_kv_heads // num_kv_heads

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str) -> None:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if shard_id == "q":
            offset, size, shard = 0, q_size, loaded.tensor_split(self.tp_size, 0)[self.tp_rank]
        else:
            offset, size = (q_size, kv_size) if shard_id == "k" else (q_size + kv_size, kv_size)
            shard = loaded.tensor_split(self.num_kv_shards, 0)[self.tp_rank * self.num_kv_shards // self.tp_size]
        copy_weight(param.data.narrow(0, offset, size), shard)


class RowParallelLinear(LinearBase):
    """A rank holds input columns [rank * K/tp, (rank + 1) * K/tp) of the weight, so its product is a partial sum over
    its share of the features, which the all-reduce adds up; the bias, whole on every rank, is added by rank 0."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__(input_size // tp_size(), output_size, bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        copy_weight(param.data, loaded if param is self.bias else loaded.tensor_split(self.tp_size, 1)[self.tp_rank])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.product(x, self.bias if self.tp_rank == 0 else None)
        if self.tp_size > 1:
            dist.all_reduce(y)
        return y
