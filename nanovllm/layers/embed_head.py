"""The token embedding and the LM head (float32 logits; in prefill only for the rows the step samples), their
vocabulary split across tensor-parallel ranks as in nano-vLLM."""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from nanovllm.utils.context import get_context
from nanovllm.utils.loader import copy_weight
from nanovllm.utils.parallel import tp_rank, tp_size


class VocabParallelEmbedding(nn.Module):
    """A rank holds the rows of token ids [vocab_start, vocab_start + ceil(vocab / tp)), the last rank's padded with
    zero rows where tp does not divide the vocabulary; it embeds the ids in its range as zeros elsewhere, and the
    all-reduce adds the ranks' rows up."""

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank(), tp_size()
        self.vocab_size = vocab_size
        self.shard_size = -(-vocab_size // self.tp_size)
        self.vocab_start = self.tp_rank * self.shard_size
        self.weight = nn.Parameter(torch.empty(self.shard_size, hidden_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        if loaded.shape[0] != self.vocab_size:
            raise ValueError(f"checkpoint shape {tuple(loaded.shape)}, model ({self.vocab_size}, {param.shape[1]})")
        shard = loaded[self.vocab_start:self.vocab_start + self.shard_size]
        copy_weight(param.data[:len(shard)], shard)
        param.data[len(shard):].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        ids = input_ids - self.vocab_start
        mine = (ids >= 0) & (ids < self.shard_size)
        y = F.embedding(ids * mine, self.weight) * mine.unsqueeze(1)
        dist.all_reduce(y)
        return y


class ParallelLMHead(VocabParallelEmbedding):
    """Float32 logits, in prefill only for the rows the context asks for (the last token of finished prompts). Each rank
    computes its vocabulary shard's; rank 0 gathers them, and the other ranks return None (only rank 0 samples)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        ctx = get_context()
        if ctx.is_prefill:
            hidden_states = hidden_states[ctx.logits_indices]
        logits = F.linear(hidden_states, self.weight)
        if self.tp_size > 1:
            shards = [torch.empty_like(logits) for _ in range(self.tp_size)] if self.tp_rank == 0 else None
            dist.gather(logits, shards, dst=0)
            if shards is None:
                return None
            logits = torch.cat(shards, dim=-1)[:, :self.vocab_size]
        return logits.float()
