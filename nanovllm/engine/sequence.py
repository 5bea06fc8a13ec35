"""One request as the engine tracks it: its tokens, its KV blocks, its state and why it finished."""
from enum import Enum, auto
from itertools import count

import torch

from nanovllm.sampling_params import SamplingParams


# The last token of a sequence whose decode step is scheduled before the token is sampled (Scheduler.schedule_ahead);
# never read as a token: the device gets the sampled token in its place.
PLACEHOLDER_TOKEN = -1


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    """One request: its tokens, where they live in the KV cache, and how far the model has got."""

    block_size = 16
    _ids = count()

    def __init__(self, token_ids: list[int], sampling_params: SamplingParams = SamplingParams()):
        self.seq_id = next(Sequence._ids)
        self.status = SequenceStatus.WAITING
        # Why it finished: "stop" (EOS or a stop token), "length" (max_tokens or max_model_len) or "abort" (a step
        # failed or was interrupted: LLMEngine.abort_all).
        self.finish_reason: str | None = None
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = len(token_ids)
        self.block_table: list[int] = []
        # Tokens whose K/V are in the cache (cached prefix included) and how many this step computes.
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.num_scheduled_tokens = 0
        self.sampling_params = sampling_params
        # Made by the ModelRunner on the model's device for seeded requests.
        self.generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    def __getitem__(self, key):
        return self.token_ids[key]

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def ahead(self) -> bool:
        """Its next decode step is scheduled (Scheduler.schedule_ahead): its last token is a placeholder."""
        return self.token_ids[-1] == PLACEHOLDER_TOKEN

    @property
    def last_token(self) -> int:
        return self.token_ids[-1]

    @property
    def num_blocks(self) -> int:
        return (len(self.token_ids) + self.block_size - 1) // self.block_size

    def block(self, i: int) -> list[int]:
        return self.token_ids[i * self.block_size:(i + 1) * self.block_size]

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
