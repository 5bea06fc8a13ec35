"""Argument checks shared by the kernel wrappers: a bad call fails with a message naming the argument."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_tensor(name: str, t: object, ndim: int, dtypes: tuple[torch.dtype, ...], device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {dtypes}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")
    if t.numel() > 0 and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, got strides {t.stride()}")


def check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_kv_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, device: torch.device) -> None:
    check_tensor("k_cache", k_cache, 4, FLOAT_DTYPES, device)
    check_tensor("v_cache", v_cache, 4, FLOAT_DTYPES, device)
    check_shape("v_cache", v_cache, tuple(k_cache.shape))
    if v_cache.dtype != k_cache.dtype or v_cache.stride() != k_cache.stride():
        raise ValueError("v_cache must have the dtype and strides of k_cache")
    block_size = k_cache.shape[1]
    if block_size <= 0 or block_size & (block_size - 1):
        raise ValueError(f"k_cache block_size (dim 1) must be a power of two, got {block_size}")


def check_attention_heads(q: torch.Tensor, k_cache: torch.Tensor) -> None:
    if q.shape[-1] != k_cache.shape[3]:
        raise ValueError(f"q head_dim {q.shape[-1]} must equal k_cache head_dim {k_cache.shape[3]}")
    if q.shape[1] % k_cache.shape[2]:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of k_cache kv heads ({k_cache.shape[2]})")
    if q.dtype != k_cache.dtype:
        raise TypeError(f"q dtype {q.dtype} must equal k_cache dtype {k_cache.dtype}")


def check_sliding_window(sliding_window: int | None) -> None:
    if sliding_window is not None and (not isinstance(sliding_window, int) or sliding_window <= 0):
        raise ValueError(f"sliding_window must be None or a positive int, got {sliding_window!r}")


def check_block_tables(block_tables: torch.Tensor, seq_lens: torch.Tensor, batch: int, device: torch.device) -> None:
    check_tensor("block_tables", block_tables, 2, (torch.int32,), device)
    if block_tables.shape[0] != batch:
        raise ValueError(f"block_tables must have {batch} rows (one per sequence), got {tuple(block_tables.shape)}")
    check_tensor("seq_lens", seq_lens, 1, INDEX_DTYPES, device)
    check_shape("seq_lens", seq_lens, (batch,))
