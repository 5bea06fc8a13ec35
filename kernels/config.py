"""The tunable launch parameters of the fused RMSNorm+Linear kernel, their validation and the default heuristic."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

_POW2_FIELDS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps")
# tl.dot needs every tile dimension to be at least 16.
_MIN_BLOCK = 16
_MAX_BLOCK = 512
_WARPS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Config:
    BLOCK_M: int = 16
    BLOCK_N: int = 64
    BLOCK_K: int = 128
    num_warps: int = 4
    num_stages: int = 3
    GROUP_M: int = 8
    SPLIT_K: int = 1

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"Config: unknown field(s) {sorted(unknown)}; expected {sorted(names)}")
        return cls(**{k: int(v) for k, v in d.items()})

    def smem_bytes(self, elem_bytes: int) -> int:
        """Shared memory of the software pipeline: num_stages copies of the A and B tiles."""
        return max(self.num_stages, 1) * (self.BLOCK_M + self.BLOCK_N) * self.BLOCK_K * elem_bytes

    def validate(self, K: int | None = None, elem_bytes: int = 2, smem_limit: int | None = None) -> None:
        """Raise ValueError naming the first impossible field; K and smem_limit enable the shape and device checks."""
        for name in _POW2_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0 or v & (v - 1):
                raise ValueError(f"Config.{name}={v!r}: expected a positive power of two")
        for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
            v = getattr(self, name)
            if not _MIN_BLOCK <= v <= _MAX_BLOCK:
                raise ValueError(f"Config.{name}={v}: expected a value in [{_MIN_BLOCK}, {_MAX_BLOCK}]")
        if self.num_warps not in _WARPS:
            raise ValueError(f"Config.num_warps={self.num_warps}: expected one of {_WARPS}")
        if not 1 <= self.num_stages <= 8:
            raise ValueError(f"Config.num_stages={self.num_stages}: expected 1..8")
        if self.GROUP_M < 1:
            raise ValueError(f"Config.GROUP_M={self.GROUP_M}: expected >= 1")
        if self.SPLIT_K < 1:
            raise ValueError(f"Config.SPLIT_K={self.SPLIT_K}: expected >= 1")
        if K is not None:
            k_blocks = -(-K // self.BLOCK_K)
            if self.SPLIT_K > k_blocks:
                raise ValueError(
                    f"Config.SPLIT_K={self.SPLIT_K}: larger than the {k_blocks} K blocks "
                    f"(K={K}, BLOCK_K={self.BLOCK_K})")
        if smem_limit is not None:
            need = self.smem_bytes(elem_bytes)
            if need > smem_limit:
                raise ValueError(
                    f"Config.num_stages/BLOCK_*: needs ~{need} bytes of shared memory "
                    f"(num_stages={self.num_stages} x (BLOCK_M+BLOCK_N) x BLOCK_K x {elem_bytes} B), "
                    f"the device allows {smem_limit}")


def device_smem_limit(device: torch.device) -> int | None:
    """Largest shared memory one block may opt into on a CUDA device; None elsewhere (the interpreter has no limit)."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "shared_memory_per_block_optin", None) or props.shared_memory_per_block


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def _floor_pow2(v: int) -> int:
    return 1 << (max(v, 1).bit_length() - 1)


def default_config(M: int, N: int, K: int, device: torch.device) -> Config:
    """A config that is never a bad choice, for when no tuned table covers the shape.

    Decode shapes (small M) are weight-read bound: narrow N tiles and split-K until every SM has
    several programs streaming the weight. Prefill shapes are compute bound: big square tiles.
    """
    if M <= 64:
        block_m, block_n, block_k = 16, 64, 128
        tiles = max(1, -(-M // block_m) * -(-N // block_n))
        k_blocks = -(-K // block_k)
        split = _floor_pow2(max(1, (4 * _sm_count(device)) // tiles))
        split = min(split, max(1, k_blocks // 4))
        return Config(block_m, block_n, block_k, num_warps=4, num_stages=4, GROUP_M=8, SPLIT_K=split)
    if M <= 256:
        return Config(64, 128, 64, num_warps=4, num_stages=4, GROUP_M=8)
    return Config(128, 128, 64, num_warps=8, num_stages=3, GROUP_M=8)
