"""What every launch of the GEMM kernels decides before it starts: the config, the buffers, the index width."""
from __future__ import annotations

import dataclasses

import torch

from kernels.config import Config, default_config, device_smem_limit
from kernels.epilogue import PLAIN, Epilogue
from kernels.tma_gemm import tma_problem

_INT32_LIMIT = 2**31


def new_buffer(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Every buffer the wrappers allocate comes from here, so tests can poison them with NaN."""
    return torch.empty(shape, device=like.device, dtype=dtype)


def _max_offset(t: torch.Tensor) -> int:
    return sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)


def is_wide(workspace: int, *tensors: torch.Tensor) -> bool:
    """Whether some element offset of the tensors or of a split-K workspace of `workspace` elements passes 2**31
    (a 151936-wide lm_head at M=16384): Triton indexes in int32, and must then use int64."""
    return max(workspace, *(_max_offset(t) for t in tensors)) >= _INT32_LIMIT


def choose_config(config: Config | None, M: int, N: int, K: int, x2: torch.Tensor, weight: torch.Tensor,
                  residual: torch.Tensor | None, norm_weight: torch.Tensor | None, has_norm: bool,
                  epilogue: Epilogue = PLAIN, trusted: bool = False) -> Config:
    """The config to launch for an (M, K) x (K, N) product: `config`, or the default for the shape (with pointer
    loads where TMA cannot take these tensors). A paired `epilogue` (kernels/paired.py) streams two weight tiles,
    BLOCK_N column pairs. A given config is validated unless `trusted`: the runtime's configs were, once, where
    tuning_table.select_configs resolved them for this shape and device."""
    chosen = config is None
    if chosen:
        config = default_config(M, N, K, x2.device, x2.element_size(), tma=not epilogue.paired)
        if epilogue.paired:
            one_split = dataclasses.replace(config, SPLIT_K=1)
            config = epilogue.launched(one_split) or dataclasses.replace(one_split, BLOCK_N=16)
    elif not isinstance(config, Config):
        raise TypeError(f"config: expected a kernels.Config or None, got {type(config).__name__}")
    if not (trusted and not chosen):
        check_launch(config, K, x2.element_size(), device_smem_limit(x2.device), has_norm, epilogue)
    # What TMA needs of these tensors (unit stride, 16-byte aligned pointers) the shape alone cannot vouch for.
    if config.TMA:
        problem = tma_problem(x2, residual, weight, norm_weight)
        if problem and chosen:  # the default's choice, from the shape alone: pointer loads take any layout
            config = default_config(M, N, K, x2.device, x2.element_size(), tma=False)
        elif problem:
            raise ValueError(f"config: TMA={config.TMA} cannot run here: {problem}")
    return config


def check_launch(config: Config, K: int, elem_bytes: int, smem_limit: int | None, has_norm: bool,
                 epilogue: Epilogue) -> None:
    """Raise ValueError naming why `config` (already in `epilogue`'s launched form) cannot run on K columns
    within `smem_limit` bytes of shared memory."""
    config.validate(K=K, elem_bytes=elem_bytes, smem_limit=smem_limit, norm=has_norm)
    if not epilogue.paired:
        return
    what = "silu_and_mul" if epilogue.kind == "gated" else "rotary"
    if config.SPLIT_K != 1 or config.TMA:
        raise ValueError(f"config: {what} is applied in the GEMM's epilogue, which needs SPLIT_K=1 and TMA=0; got "
                         f"SPLIT_K={config.SPLIT_K}, TMA={config.TMA}")
    if epilogue.kind == "rotary" and (epilogue.head_dim // 2) % config.BLOCK_N:
        raise ValueError(f"config: with rotary a program's columns lie in one head: BLOCK_N={config.BLOCK_N} must "
                         f"divide head_dim/2={epilogue.head_dim // 2}")
    need = dataclasses.replace(config, BLOCK_N=2 * config.BLOCK_N).smem_bytes(elem_bytes)
    if smem_limit is not None and need > smem_limit:
        raise ValueError(f"config: with {what} each stage holds two weight tiles: needs ~{need} bytes of shared "
                         f"memory, the device allows {smem_limit}")
