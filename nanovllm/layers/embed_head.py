"""The token embedding and the LM head (float32 logits; in prefill only for the rows the step samples)."""
import torch
import torch.nn.functional as F
from torch import nn

from nanovllm.utils.context import get_context


class VocabEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class LMHead(VocabEmbedding):
    """Float32 logits, in prefill only for the rows the context asks for (the last token of finished prompts)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        ctx = get_context()
        if ctx.is_prefill:
            hidden_states = hidden_states[ctx.logits_indices]
        return F.linear(hidden_states, self.weight).float()
