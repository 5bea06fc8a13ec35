"""The search spaces of the paged attention kernels: decode (kernels/attention_decode.py) and prefill
(kernels/attention_prefill.py), tuned as kernels "attention_decode" and "attention_prefill".

A problem is one model's attention (its q heads, KV heads and head_dim; its sliding window is the form,
"window=<keys>", "" for none) at one bucket: decode buckets over ("batch", "context"), prefill over ("tokens",
"context"); the runtime reads a step's tile by
the table's bucket rule (tuning_table/attention.py says which context a step looks up).

- Decode: `batch` sequences, the first `context` keys long, the others of lengths drawn (with a fixed seed, so
  that the bytes read are known) from (context / 2, context]: a bucket serves the steps whose longest sequence is
  at most `context`. Axes: the split kernel's BLOCK_N, warps and stages, and the number of KV splits.
- Prefill: `tokens` new tokens in sequences of min(tokens, context) new tokens each (the last one shorter where it
  does not divide), every sequence `context` keys long: a long prompt's chunks (tokens < context: the rest of the
  context is a cached prefix) or many short prompts (tokens > context). Axes: BLOCK_M (query rows: tokens x heads of
  a group), BLOCK_N, warps and stages.

The KV cache is filled with fresh random data, the sequences' blocks shuffled over it (a block table's unused
entries point at random blocks too: the kernels must not read them). q is scaled so that a few keys dominate each
softmax: an output then moves by its full size when a kernel drops or misplaces keys, and the dtype's tolerance
(autotune/objective.py) catches it. The baseline is F.scaled_dot_product_attention on the gathered KV ([B, heads,
keys, head_dim], gathered once with the inputs, so the baseline's time is the attention's only), masked to each
sequence's keys. The cache's block size is the engine's default, 16 tokens.

Default buckets (one tune of a model's attention on an H200 in about two minutes): decode batch 1, 4, 16, 64, 256 x
context 512, 2048, 8192, 32768; prefill tokens 512, 4096, 16384 x context 1024, 8192. `--m` and `--context` choose
others. Decode buckets of batch x context above MAX_KV_TOKENS are left out (more KV than an H200 holds next to a 7B
model's weights): 14 of the default 20.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
import triton

from kernels.attention_decode import DEFAULT_TILE, DecodeTile, default_num_splits, paged_decode_attention_triton
from kernels.attention_prefill import PrefillTile, default_prefill_tile, paged_prefill_attention_triton
from kernels.config import DTYPES
from search_spaces.base import Params, SearchSpace
from search_spaces.shapes import model_configs
from tuning_table.format import GENERIC_KERNELS

BLOCK_SIZE = 16
DEFAULT_BATCH_BUCKETS = (1, 4, 16, 64, 256)
DEFAULT_CONTEXT_BUCKETS = (512, 2048, 8192, 32768)
DEFAULT_TOKEN_BUCKETS = (512, 4096, 16384)
DEFAULT_PREFILL_CONTEXT_BUCKETS = (1024, 8192)
# Decode buckets above this many cached tokens (batch x context) are left out of the defaults: llama-7b's KV cache
# is 512 KiB a token over its 32 layers, so an H200 holds about this many next to the weights.
MAX_KV_TOKENS = 262144
# q's scale: its scores' spread, so that a handful of keys carry each softmax (module docstring).
Q_SCALE = 3.0
_SPLITS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


@dataclass(frozen=True)
class AttentionShape:
    """A model's attention as one tensor-parallel rank runs it; window 0 for none."""
    q_heads: int
    kv_heads: int
    head_dim: int
    window: int = 0


def attention_shapes(spec: str, tp: int = 1) -> list[AttentionShape]:
    """The attention shapes of `--shapes` (presets and config.json paths, comma-separated), one per distinct
    (heads, head_dim, window) of their layers, as one of `tp` ranks runs them."""
    shapes = []
    for source, cfg in model_configs(spec):
        cfg = cfg.get("text_config", cfg)
        heads, hidden = cfg.get("num_attention_heads"), cfg.get("hidden_size")
        if not isinstance(heads, int) or not isinstance(hidden, int):
            raise ValueError(f"{source}: missing integer num_attention_heads or hidden_size; expected a decoder "
                             "config.json")
        kv_heads = cfg.get("num_key_value_heads") or heads
        head_dim = cfg.get("head_dim") or hidden // heads
        if heads % tp or (kv_heads % tp and tp % kv_heads):
            raise ValueError(f"{source}: --tp {tp} must divide num_attention_heads={heads}, and divide "
                             f"num_key_value_heads={kv_heads} or be a multiple of it")
        # The runtime's rule (nanovllm/models/llama.py): `layer_types` marks the sliding layers where it is given.
        window = cfg.get("sliding_window") or 0
        types = cfg.get("layer_types")
        windows = {window if t == "sliding_attention" else 0 for t in types} if types else {window}
        shapes += [AttentionShape(heads // tp, max(1, kv_heads // tp), head_dim, w) for w in sorted(windows)]
    return list(dict.fromkeys(shapes))


def window_form(window: int) -> str:
    """A problem's form: "" for full attention, "window=W" for a sliding window of W keys."""
    return f"window={window}" if window else ""


def _window(form: str) -> int:
    if not form:
        return 0
    if not form.startswith("window=") or not form[7:].isdigit():
        raise ValueError(f"form {form!r}: expected '' or window=<keys>")
    return int(form[7:])


def _check(problem: Any) -> None:
    for name, v in {**problem.dims, "window": problem.window}.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "window" else 1):
            raise ValueError(f"{type(problem).__name__}.{name}={v!r}: expected a positive int")
    if problem.q_heads % problem.kv_heads:
        raise ValueError(f"{type(problem).__name__}: q_heads={problem.q_heads} is not a multiple of "
                         f"kv_heads={problem.kv_heads}")
    if problem.dtype not in DTYPES:
        raise ValueError(f"{type(problem).__name__}.dtype={problem.dtype!r}: expected one of {sorted(DTYPES)}")


class _AttentionProblem:
    """What the decode and prefill problems share: their checks and their form (the sliding window)."""

    def __post_init__(self) -> None:
        _check(self)

    @property
    def form(self) -> str:
        return window_form(self.window)


@dataclass(frozen=True)
class DecodeProblem(_AttentionProblem):
    """One new token of each of `batch` sequences over at most `context` cached keys."""
    batch: int
    context: int
    q_heads: int
    kv_heads: int
    head_dim: int
    window: int = 0
    dtype: str = "bfloat16"

    @property
    def dims(self) -> dict[str, int]:
        return {"batch": self.batch, "context": self.context, "q_heads": self.q_heads, "kv_heads": self.kv_heads,
                "head_dim": self.head_dim}

    @property
    def lengths(self) -> list[int]:
        """Each sequence's keys (module docstring): the same for every call, so footprint_bytes is exact."""
        gen = torch.Generator().manual_seed(self.batch * 1_000_003 + self.context)
        low = self.context // 2 + 1
        rest = torch.randint(low, self.context + 1, (self.batch - 1,), generator=gen) if self.context > 1 else \
            torch.ones(self.batch - 1, dtype=torch.int64)
        return [self.context, *rest.tolist()]


@dataclass(frozen=True)
class PrefillProblem(_AttentionProblem):
    """`tokens` new tokens in sequences of min(tokens, context) new tokens, each sequence `context` keys long."""
    tokens: int
    context: int
    q_heads: int
    kv_heads: int
    head_dim: int
    window: int = 0
    dtype: str = "bfloat16"

    @property
    def dims(self) -> dict[str, int]:
        return {"tokens": self.tokens, "context": self.context, "q_heads": self.q_heads, "kv_heads": self.kv_heads,
                "head_dim": self.head_dim}

    @property
    def q_lens(self) -> list[int]:
        per_seq = min(self.tokens, self.context)
        full, rest = divmod(self.tokens, per_seq)
        return [per_seq] * full + ([rest] if rest else [])


@dataclass
class AttentionInputs:
    """One input set: the paged cache and its metadata for the kernel, the gathered KV and mask for the baseline."""
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    cu_seqlens_q: torch.Tensor
    k: torch.Tensor      # [sequences, kv_heads, context, head_dim]
    v: torch.Tensor
    mask: torch.Tensor | None  # [sequences, 1, queries, context], True where visible; None: all visible
    window: int | None
    q_lens: list[int]    # on the host, so that the baseline never waits for the device (it is graph-captured)


def _paged_inputs(q_lens: list[int], seq_lens: list[int], context: int, problem: Any, device: torch.device,
                  gen: torch.Generator) -> AttentionInputs:
    dtype = DTYPES[problem.dtype]
    width = triton.cdiv(context, BLOCK_SIZE)
    blocks = [triton.cdiv(n, BLOCK_SIZE) for n in seq_lens]
    total = sum(blocks)
    order = torch.randperm(total, generator=gen, device=device).to(torch.int32)
    table = torch.randint(0, total, (len(seq_lens), width), generator=gen, device=device, dtype=torch.int32)
    start = 0
    for row, n in enumerate(blocks):
        table[row, :n] = order[start:start + n]
        start += n
    shape = (total, BLOCK_SIZE, problem.kv_heads, problem.head_dim)
    k_cache = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    v_cache = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    q = Q_SCALE * torch.randn(sum(q_lens), problem.q_heads, problem.head_dim, generator=gen, device=device,
                              dtype=dtype)

    def gathered(cache: torch.Tensor) -> torch.Tensor:
        keys = cache[table.long()].reshape(len(seq_lens), width * BLOCK_SIZE, problem.kv_heads, problem.head_dim)
        return keys[:, :context].transpose(1, 2).contiguous()

    lens = torch.tensor(seq_lens, device=device)
    cu = torch.tensor([0, *q_lens], device=device).cumsum(0).to(torch.int32)
    # Query i of a sequence sits at position seq_len - q_len + i and sees the keys at or before it (within the window).
    queries = max(q_lens)
    pos = lens[:, None] - torch.tensor(q_lens, device=device)[:, None] + torch.arange(queries, device=device)
    keys = torch.arange(context, device=device)
    mask = keys[None, None, :] <= pos[:, :, None]
    if problem.window:
        mask &= keys[None, None, :] > pos[:, :, None] - problem.window
    return AttentionInputs(q, k_cache, v_cache, table, lens.to(torch.int32), cu, gathered(k_cache), gathered(v_cache),
                           None if bool(mask.all()) else mask[:, None], problem.window or None, q_lens)


def _sdpa(q: torch.Tensor, inputs: AttentionInputs, mask: torch.Tensor | None, k: torch.Tensor,
          v: torch.Tensor) -> torch.Tensor:
    """q [sequences, q_heads, queries, head_dim] over the gathered keys."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5,
                                          enable_gqa=q.shape[1] != k.shape[1])


def _visible(seq_len: int, q_len: int, window: int) -> int:
    """Key-query pairs a sequence's new tokens attend over."""
    first = seq_len - q_len + 1  # keys the first new token sees, without a window
    return sum(min(first + i, window or math.inf) for i in range(q_len))


class _AttentionSpace(SearchSpace):
    def violation(self, config: Params, problem: Any, smem_limit: int | None) -> str | None:
        # K and V tiles of each pipeline stage in shared memory.
        block_d = max(triton.next_power_of_2(problem.head_dim), 16)
        smem = config["num_stages"] * 2 * config["BLOCK_N"] * block_d * DTYPES[problem.dtype].itemsize
        if smem_limit is not None and smem > smem_limit:
            return f"shared memory: {smem} B of K/V stages > the device's {smem_limit} B"
        return None

    def footprint_bytes(self, problem: Any) -> int:
        return self._kv_bytes(problem) + 2 * self._queries(problem) * problem.q_heads * problem.head_dim * \
            DTYPES[problem.dtype].itemsize

    def flops(self, problem: Any) -> int:
        # QK^T and PV: 2 x 2 x head_dim per (query head, visible key).
        return 4 * self._pairs(problem) * problem.q_heads * problem.head_dim

    def _kv_bytes(self, problem: Any) -> int:
        """K and V bytes read: every visible key of every sequence, once per KV head."""
        keys = sum(min(n, problem.window or n) for n in self._seq_lens(problem))
        return 2 * keys * problem.kv_heads * problem.head_dim * DTYPES[problem.dtype].itemsize


class AttentionDecodeSpace(_AttentionSpace):
    name = "attention_decode"
    bucket_dims = GENERIC_KERNELS[name]
    decode_step = True

    def problems(self, shapes: str, dtype: str, tp: int = 1, batches: list[int] | None = None,
                 contexts: list[int] | None = None) -> list[DecodeProblem]:
        """The decode problems of `--shapes` at the given buckets (default: module docstring), but those of more
        than MAX_KV_TOKENS cached tokens."""
        buckets = [(b, c) for b in batches or DEFAULT_BATCH_BUCKETS for c in contexts or DEFAULT_CONTEXT_BUCKETS
                   if b * c <= MAX_KV_TOKENS]
        if not buckets:
            raise ValueError(f"--m, --context: every batch x context is above {MAX_KV_TOKENS} cached tokens")
        return [DecodeProblem(b, c, s.q_heads, s.kv_heads, s.head_dim, s.window, dtype)
                for s in attention_shapes(shapes, tp) for b, c in buckets]

    def make_problem(self, dims: dict[str, int], dtype: str, form: str = "") -> DecodeProblem:
        return DecodeProblem(**dims, window=_window(form), dtype=dtype)

    def axes(self, problem: DecodeProblem) -> dict[str, list[int]]:
        keys = min(problem.context, problem.window or problem.context)
        return {"BLOCK_N": [16, 32, 64, 128], "num_warps": [1, 2, 4, 8], "num_stages": [1, 2, 3, 4],
                "num_splits": [s for s in _SPLITS if s == 1 or s <= triton.cdiv(keys, 16)]}

    def violation(self, config: Params, problem: DecodeProblem, smem_limit: int | None) -> str | None:
        keys = min(problem.context, problem.window or problem.context)
        if config["num_splits"] > triton.cdiv(keys, config["BLOCK_N"]):
            return (f"num_splits={config['num_splits']}: more splits than the {triton.cdiv(keys, config['BLOCK_N'])} "
                    f"tiles of {config['BLOCK_N']} keys")
        return super().violation(config, problem, smem_limit)

    def heuristics(self, problem: DecodeProblem, device: torch.device) -> list[Params]:
        # What a step launches without a table: the default tile, and the splits its shapes give on this device.
        splits = default_num_splits(problem.batch, problem.kv_heads, problem.context, device)
        return [Params({**decode_config(DEFAULT_TILE), "num_splits": splits})]

    def make_inputs(self, problem: DecodeProblem, device: torch.device, copies: int, seed: int = 0) -> list[Any]:
        gen = torch.Generator(device=device).manual_seed(seed)
        return [_paged_inputs([1] * problem.batch, problem.lengths, problem.context, problem, device, gen)
                for _ in range(copies)]

    def launcher(self, config: Params | None) -> Callable[[AttentionInputs], torch.Tensor]:
        if config is None:
            return lambda i: _sdpa(i.q[:, :, None], i, i.mask, i.k, i.v)[:, :, 0]
        tile = DecodeTile(config["BLOCK_N"], config["num_warps"], config["num_stages"])
        return lambda i: paged_decode_attention_triton(i.q, i.k_cache, i.v_cache, i.block_tables, i.seq_lens,
                                                       i.q.shape[-1] ** -0.5, i.window,
                                                       num_splits=config["num_splits"], tile=tile)

    def compile_problem(self, problem: DecodeProblem) -> DecodeProblem:
        # The binaries depend on the heads and the config only, and on the block table's width through Triton's
        # specialization of its stride (== 1, % 16): one sequence of a table of the same class compiles them.
        width = triton.cdiv(problem.context, BLOCK_SIZE)
        return dataclasses.replace(problem, batch=1, context=min(problem.context,
                                                                  BLOCK_SIZE * min(width, 16 + width % 16)))

    def _seq_lens(self, problem: DecodeProblem) -> list[int]:
        return problem.lengths

    def _queries(self, problem: DecodeProblem) -> int:
        return problem.batch

    def _pairs(self, problem: DecodeProblem) -> int:
        return sum(min(n, problem.window or n) for n in problem.lengths)


class AttentionPrefillSpace(_AttentionSpace):
    name = "attention_prefill"
    bucket_dims = GENERIC_KERNELS[name]

    def problems(self, shapes: str, dtype: str, tp: int = 1, tokens: list[int] | None = None,
                 contexts: list[int] | None = None) -> list[PrefillProblem]:
        """The prefill problems of `--shapes` at the given buckets (default: module docstring)."""
        return [PrefillProblem(t, c, s.q_heads, s.kv_heads, s.head_dim, s.window, dtype)
                for s in attention_shapes(shapes, tp) for t in tokens or DEFAULT_TOKEN_BUCKETS
                for c in contexts or DEFAULT_PREFILL_CONTEXT_BUCKETS]

    def make_problem(self, dims: dict[str, int], dtype: str, form: str = "") -> PrefillProblem:
        return PrefillProblem(**dims, window=_window(form), dtype=dtype)

    def axes(self, problem: PrefillProblem) -> dict[str, list[int]]:
        group = problem.q_heads // problem.kv_heads
        return {"BLOCK_M": [m for m in (16, 32, 64, 128) if m >= group], "BLOCK_N": [16, 32, 64, 128],
                "num_warps": [2, 4, 8], "num_stages": [1, 2, 3]}

    def violation(self, config: Params, problem: PrefillProblem, smem_limit: int | None) -> str | None:
        group = problem.q_heads // problem.kv_heads
        if config["BLOCK_M"] < max(16, triton.next_power_of_2(group)):
            return f"BLOCK_M={config['BLOCK_M']}: fewer rows than the {group} query heads of a KV head (or 16)"
        return super().violation(config, problem, smem_limit)

    def heuristics(self, problem: PrefillProblem, device: torch.device) -> list[Params]:
        group = problem.q_heads // problem.kv_heads
        return [Params(prefill_config(default_prefill_tile(DTYPES[problem.dtype], problem.tokens, group)))]

    def make_inputs(self, problem: PrefillProblem, device: torch.device, copies: int, seed: int = 0) -> list[Any]:
        gen = torch.Generator(device=device).manual_seed(seed)
        q_lens = problem.q_lens
        return [_paged_inputs(q_lens, [problem.context] * len(q_lens), problem.context, problem, device, gen)
                for _ in range(copies)]

    def launcher(self, config: Params | None) -> Callable[[AttentionInputs], torch.Tensor]:
        if config is None:
            return _prefill_baseline
        tile = PrefillTile(config["BLOCK_M"], config["BLOCK_N"], config["num_warps"], config["num_stages"])
        return lambda i: paged_prefill_attention_triton(i.q, i.k_cache, i.v_cache, i.block_tables, i.cu_seqlens_q,
                                                        i.seq_lens, i.q.shape[-1] ** -0.5, i.window, tile=tile)

    def compile_problem(self, problem: PrefillProblem) -> PrefillProblem:
        # The kernel does not specialize on the batch or the block table's width: a few tokens compile its binaries.
        return dataclasses.replace(problem, tokens=min(problem.tokens, 32), context=min(problem.context, 64))

    def _seq_lens(self, problem: PrefillProblem) -> list[int]:
        return [problem.context] * len(problem.q_lens)

    def _queries(self, problem: PrefillProblem) -> int:
        return problem.tokens

    def _pairs(self, problem: PrefillProblem) -> int:
        return sum(_visible(problem.context, q, problem.window) for q in problem.q_lens)


def _prefill_baseline(i: AttentionInputs) -> torch.Tensor:
    """SDPA of each run of equally long sequences (all but maybe the last), back in the kernel's [T, heads, D]."""
    q_lens = i.q_lens
    out, start, b = [], 0, 0
    while b < len(q_lens):
        n = q_lens[b]
        run = next((e for e in range(b, len(q_lens)) if q_lens[e] != n), len(q_lens))
        q = i.q[start:start + (run - b) * n].view(run - b, n, *i.q.shape[1:]).transpose(1, 2)
        mask = None if i.mask is None else i.mask[b:run, :, :n]
        out.append(_sdpa(q, i, mask, i.k[b:run], i.v[b:run]).transpose(1, 2).reshape(-1, *i.q.shape[1:]))
        start, b = start + (run - b) * n, run
    return torch.cat(out)


def decode_config(tile: DecodeTile) -> dict[str, int]:
    return {"BLOCK_N": tile.BLOCK_N, "num_warps": tile.num_warps, "num_stages": tile.num_stages}


def prefill_config(tile: PrefillTile) -> dict[str, int]:
    return dataclasses.asdict(tile)
