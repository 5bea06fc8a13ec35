"""Which tensor-parallel shard the layers being built hold: rank `tp_rank()` of `tp_size()`, set by the ModelRunner
while it builds the model (one rank, the whole model, otherwise). Each layer keeps its own copy, so engines of
different sizes can live in one process."""
from collections.abc import Iterator
from contextlib import contextmanager

_SHARD = (0, 1)


@contextmanager
def tensor_parallel_shard(rank: int, size: int) -> Iterator[None]:
    global _SHARD
    previous, _SHARD = _SHARD, (rank, size)
    try:
        yield
    finally:
        _SHARD = previous


def tp_rank() -> int:
    return _SHARD[0]


def tp_size() -> int:
    return _SHARD[1]
