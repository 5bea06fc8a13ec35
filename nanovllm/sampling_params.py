"""How a request samples (temperature, top-k, top-p, seed, stop tokens, length), checked field by field."""
import math
import numbers
from dataclasses import dataclass


def _int(name: str, value) -> int:
    # bool is an int subclass, but max_tokens=True or seed=False is a mistake, not a 1 or a 0.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def _float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    return float(value)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each new token, checked here so that a bad value fails with a message naming its field.

    temperature=0 is greedy; top_k=-1 or 0 (as in Hugging Face) and top_p=1.0 turn those filters off. Ints are
    accepted where floats are expected, never bools where ints are. seed (in [0, 2**64)) makes a request's sampling
    reproducible. Frozen: a request is checked once, when it is made, and cannot be changed into a bad one later.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 64
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        temperature = _float("temperature", self.temperature)
        # inf would turn every logit into 0 (or nan) and fail in the middle of a step.
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be a finite float >= 0, got {temperature}")
        top_p = _float("top_p", self.top_p)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        top_k = _int("top_k", self.top_k)
        if not top_k >= -1:
            raise ValueError(f"top_k must be -1 or 0 (off) or >= 1, got {top_k}")
        max_tokens = _int("max_tokens", self.max_tokens)
        if not max_tokens >= 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if not isinstance(self.ignore_eos, bool):
            raise TypeError(f"ignore_eos must be True or False, got {type(self.ignore_eos).__name__} "
                            f"{self.ignore_eos!r}")
        stop_token_ids = self.stop_token_ids
        if stop_token_ids is not None:
            if not isinstance(stop_token_ids, (list, tuple)):
                raise TypeError(f"stop_token_ids must be a list of ints or None, got "
                                f"{type(stop_token_ids).__name__} {stop_token_ids!r}")
            stop_token_ids = [_int(f"stop_token_ids[{i}]", t) for i, t in enumerate(stop_token_ids)]
            if any(t < 0 for t in stop_token_ids):
                raise ValueError(f"stop_token_ids must be token ids (>= 0), got {stop_token_ids}")
        seed = self.seed
        if seed is not None:
            seed = _int("seed", seed)
            if not 0 <= seed < 2**64:  # what torch.Generator.manual_seed takes
                raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        # The checked values as plain Python types (numpy ints and floats are numbers too, but torch wants these).
        for name, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k),
                            ("max_tokens", max_tokens), ("stop_token_ids", stop_token_ids), ("seed", seed)):
            object.__setattr__(self, name, value)
