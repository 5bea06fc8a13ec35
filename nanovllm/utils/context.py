"""The per-step attention metadata the layers read (slot mapping, block tables, sequence lengths)."""
from dataclasses import dataclass

import torch


@dataclass
class Context:
    """What the attention layers and the LM head need to know about the current batch, set by the ModelRunner."""

    is_prefill: bool = False
    cu_seqlens_q: torch.Tensor | None = None
    seq_lens: torch.Tensor | None = None
    slot_mapping: torch.Tensor | None = None
    block_tables: torch.Tensor | None = None
    # Rows of the prefill batch whose logits are needed: the last token of each prompt that this step completes.
    logits_indices: torch.Tensor | None = None


_CONTEXT = Context()


def get_context() -> Context:
    return _CONTEXT


def set_context(**kwargs) -> None:
    global _CONTEXT
    _CONTEXT = Context(**kwargs)


def reset_context() -> None:
    global _CONTEXT
    _CONTEXT = Context()
