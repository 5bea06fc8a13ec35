"""The tunable launch parameters of the fused RMSNorm+Linear kernel (and of its norm-free GEMM, kernels/linear.py),
their validation and the default heuristic."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

# The activation dtypes the GEMM kernels take, by the names tables, studies and the CLI use.
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_POW2_FIELDS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps")
# tl.dot needs every tile dimension to be at least 16; below 16 rows the pointer kernel runs a GEMV-like tile
# (kernels/gemm.py), so BLOCK_M alone goes down to 1.
_MIN_BLOCK = 16
_MIN_BLOCK_M = 1
_MAX_BLOCK = 512
_WARPS = (1, 2, 4, 8, 16)
_MAX_TMA_BOX = 256
# The TMA pipeline's mbarriers and the like: compiled kernels for sm_90 ran 16-1,064 bytes over the tiles.
_TMA_BARRIER_BYTES = 1024


@dataclass(frozen=True)
class Config:
    BLOCK_M: int = 16
    BLOCK_N: int = 64
    BLOCK_K: int = 128
    num_warps: int = 4
    num_stages: int = 3
    GROUP_M: int = 8
    SPLIT_K: int = 1
    # 1: the sum of squares is accumulated inside the GEMM's K loop (one launch);
    # 0: a row-statistics prologue kernel computes it (and h) and the K loop is a plain GEMM.
    SUMSQ_IN_LOOP: int = 0
    # The K loop's loads: 0 pointer loads (any GPU); TMA descriptors (sm_90+, kernels/tma_gemm.py) with
    # 1 a program per output tile or 2 a persistent program per SM walking the tiles.
    TMA: int = 0
    # The weight loads' L2 eviction hint: 0 none, 1 evict_first on the weight (read once) and evict_last on the
    # activations (read by every column of programs). Pointer loads only: TMA descriptors take no hint.
    EVICT: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"Config: unknown field(s) {sorted(unknown)}; expected {sorted(names)}")
        for k, v in d.items():
            if not _is_int(v):
                raise ValueError(f"Config.{k}={v!r}: expected an int")
        return cls(**d)

    def smem_bytes(self, elem_bytes: int) -> int:
        """Shared memory of the software pipeline: num_stages copies of the A and B tiles, and with TMA the
        output tile staged for its store (in two halves from BLOCK_N = 256) and the pipeline's barriers."""
        pipeline = max(self.num_stages, 1) * (self.BLOCK_M + self.BLOCK_N) * self.BLOCK_K * elem_bytes
        if not self.TMA:
            return pipeline
        halves = self.BLOCK_N >= 256
        staging = self.BLOCK_M * self.BLOCK_N * elem_bytes // (2 if halves else 1)
        if halves and self.num_warps * 16 > self.BLOCK_M:
            # Warps split along N: splitting the fp32 accumulator into halves goes through shared memory
            # (64x256 with 8 warps compiled to 32 KiB over the rest for sm_90, triton 3.6).
            staging += self.BLOCK_M * self.BLOCK_N * 4 // 2
        return pipeline + staging + _TMA_BARRIER_BYTES

    def validate(self, K: int | None = None, elem_bytes: int = 2, smem_limit: int | None = None,
                 norm: bool = True) -> None:
        """Raise ValueError naming the first impossible field; K and smem_limit enable the shape and device checks;
        norm=False checks a config of the norm-free GEMM (kernels/linear.py)."""
        for f in dataclasses.fields(self):
            if not _is_int(getattr(self, f.name)):
                raise ValueError(f"Config.{f.name}={getattr(self, f.name)!r}: expected an int")
        for name in _POW2_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0 or v & (v - 1):
                raise ValueError(f"Config.{name}={v!r}: expected a positive power of two")
        for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
            v, low = getattr(self, name), _MIN_BLOCK_M if name == "BLOCK_M" else _MIN_BLOCK
            if not low <= v <= _MAX_BLOCK:
                raise ValueError(f"Config.{name}={v}: expected a value in [{low}, {_MAX_BLOCK}]")
        if self.num_warps not in _WARPS:
            raise ValueError(f"Config.num_warps={self.num_warps}: expected one of {_WARPS}")
        if not 1 <= self.num_stages <= 8:
            raise ValueError(f"Config.num_stages={self.num_stages}: expected 1..8")
        if self.GROUP_M < 1:
            raise ValueError(f"Config.GROUP_M={self.GROUP_M}: expected >= 1")
        if self.SPLIT_K < 1:
            raise ValueError(f"Config.SPLIT_K={self.SPLIT_K}: expected >= 1")
        if self.SUMSQ_IN_LOOP not in (0, 1):
            raise ValueError(f"Config.SUMSQ_IN_LOOP={self.SUMSQ_IN_LOOP}: expected 0 or 1")
        if not norm and self.SUMSQ_IN_LOOP:
            raise ValueError(f"Config.SUMSQ_IN_LOOP={self.SUMSQ_IN_LOOP}: the plain linear kernel has no norm and "
                             "no sum of squares; expected 0")
        if self.TMA not in (0, 1, 2):
            raise ValueError(f"Config.TMA={self.TMA}: expected 0 (pointer loads), 1 or 2 (TMA descriptors)")
        if self.TMA and (self.SPLIT_K != 1 or self.SUMSQ_IN_LOOP):
            raise ValueError(f"Config.TMA={self.TMA}: the TMA main loop needs SPLIT_K=1 and SUMSQ_IN_LOOP=0, "
                             f"got SPLIT_K={self.SPLIT_K}, SUMSQ_IN_LOOP={self.SUMSQ_IN_LOOP}")
        if self.EVICT not in (0, 1):
            raise ValueError(f"Config.EVICT={self.EVICT}: expected 0 (no hint) or 1 (evict_first on the weight)")
        if self.TMA and self.EVICT:
            raise ValueError(f"Config.EVICT={self.EVICT}: TMA={self.TMA} loads take no eviction hint; expected 0")
        if self.TMA and self.BLOCK_M < _MIN_BLOCK:
            raise ValueError(f"Config.BLOCK_M={self.BLOCK_M}: the TMA main loop runs tl.dot, expected >= {_MIN_BLOCK}")
        if self.TMA and max(self.BLOCK_M, self.BLOCK_N, self.BLOCK_K) > _MAX_TMA_BOX:
            raise ValueError(f"Config.TMA={self.TMA}: a TMA tile is at most {_MAX_TMA_BOX} wide, got "
                             f"{self.BLOCK_M}x{self.BLOCK_N}x{self.BLOCK_K}")
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
                    f"(num_stages={self.num_stages} x (BLOCK_M+BLOCK_N) x BLOCK_K x {elem_bytes} B"
                    f"{', plus the output tile TMA stores through' if self.TMA else ''}), "
                    f"the device allows {smem_limit}")


def device_smem_limit(device: torch.device) -> int | None:
    """Largest shared memory one block may opt into on a CUDA device; None elsewhere (the interpreter has no limit)."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "shared_memory_per_block_optin", None) or props.shared_memory_per_block


def device_has_tma(device: torch.device) -> bool:
    """NVIDIA sm_90+ (Hopper and later); Triton's interpreter also runs TMA descriptors, so the CPU counts."""
    if device.type != "cuda":
        return True
    return torch.version.hip is None and torch.cuda.get_device_capability(device)[0] >= 9


def tma_rows_aligned(K: int, N: int, elem_bytes: int) -> bool:
    """Whether rows of K (the inputs) and of N (the output) elements meet TMA's 16-byte stride alignment."""
    return (K * elem_bytes) % 16 == 0 and (N * elem_bytes) % 16 == 0


def default_config(M: int, N: int, K: int, device: torch.device, elem_bytes: int = 2, tma: bool = True) -> Config:
    """A config that is never a bad choice, for when no tuned table covers the shape.

    Chosen from a sweep on an H200 (scripts/calibrate_default.py, docs/PERF_NOTES.md). Decode shapes
    (M <= 64) are weight-read bound: one row block, long contiguous K tiles, deep pipelining, and the
    row statistics from the prologue kernel so the K loop stays a plain, pipelined GEMM. Larger M is
    compute bound: big tiles on the persistent TMA main loop where the GPU has TMA (sm_90+) and rows are
    16-byte aligned (scripts/exp_tma.py measured it 8-15% faster than pointer loads there), unless tma=False.
    """
    if M <= 16:
        cfg = Config(16, 64, 256, num_warps=4, num_stages=4) if N <= 8192 else Config(16, 128, 128, num_stages=3)
    elif M <= 64:
        cfg = Config(max(16, _next_pow2(M)), 128, 64, num_warps=4, num_stages=4)
        # Too few output tiles to stream the weight with every SM (mistral-7b QKV: 48 tiles on 132 SMs):
        # split K until there are at least as many programs as SMs.
        tiles = -(-M // cfg.BLOCK_M) * -(-N // cfg.BLOCK_N)
        split = 1
        while tiles * split < sm_count(device) and split * 2 <= max(1, -(-K // cfg.BLOCK_K) // 8):
            split *= 2
        cfg = dataclasses.replace(cfg, SPLIT_K=split)
    elif tma and device.type == "cuda" and device_has_tma(device) and tma_rows_aligned(K, N, elem_bytes):
        cfg = (Config(128, 128, 64, num_warps=4, num_stages=4, TMA=2) if M <= 256 else
               Config(128, 256, 64, num_warps=8, num_stages=4, TMA=2))
    elif M <= 256:
        cfg = Config(128, 128 if N <= 8192 else 256, 64, num_warps=8, num_stages=4)
    else:
        cfg = Config(128, 256, 64, num_warps=8, num_stages=3)
    limit = device_smem_limit(device)
    # fp32 tiles take twice the shared memory, and small cards have less (64 KiB on a T4): drop pipeline
    # stages, then halve BLOCK_N, BLOCK_K and BLOCK_M (never below 16), then run unpipelined.
    while limit is not None and cfg.smem_bytes(elem_bytes) > limit:
        if cfg.num_stages > 2:
            cfg = dataclasses.replace(cfg, num_stages=cfg.num_stages - 1)
        elif cfg.BLOCK_N > 16:
            cfg = dataclasses.replace(cfg, BLOCK_N=cfg.BLOCK_N // 2)
        elif cfg.BLOCK_K > 16:
            cfg = dataclasses.replace(cfg, BLOCK_K=cfg.BLOCK_K // 2)
        elif cfg.BLOCK_M > 16:
            cfg = dataclasses.replace(cfg, BLOCK_M=cfg.BLOCK_M // 2)
        elif cfg.num_stages > 1:
            cfg = dataclasses.replace(cfg, num_stages=1)
        else:
            break
    return cfg


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # an H100/H200, so the interpreter runs what a GPU would


def _next_pow2(v: int) -> int:
    return 1 << max(v - 1, 0).bit_length()
