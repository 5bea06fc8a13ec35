"""Shape sets to tune: model presets, Hugging Face config.json files, explicit NxK lists, and M buckets.

Every RMSNorm+Linear site the runtime fuses is one (K, N) with K = hidden_size: the attention
norm feeding the fused QKV projection and the MLP norm feeding the fused gate/up projection. (The final norm and
lm_head stay unfused, nanovllm/models/llama.py: a tune of their shape would time a kernel nothing runs.) QKV and gate/up are tuned in the form the runtime runs them (their
`epilogue`: rotary, except where q and k are normalized before the rotary embedding as in Qwen3, and gated).
The norm-free kernel "linear" has the two plain linears that
end each block: o_proj (K = heads x head_dim, N = hidden_size) and down_proj (K = intermediate_size,
N = hidden_size). M (tokens in the batch) is tuned per bucket: the fused kernel's default buckets run from decode
batches to prefill's batch x sequence length, since the runtime fuses prefill too where a bucket wins; the plain
linear's stop at 64 rows, since past FusionOptions.linear_max_m (16) the runtime runs cuBLAS there, and a bucket tuned
above it serves only a user who raises that limit (`--m` tunes more).

With tensor parallelism over `tp` ranks every rank runs its shard of each site (nanovllm's parallel layers), so that
is what a tune with `tp` covers: QKV holds 1/tp of the q and KV heads (one KV head, replicated, where there are fewer
KV heads than ranks), gate/up 1/tp of the intermediate columns; o_proj and
down_proj 1/tp of their input features (K).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from kernels.epilogue import GATED, PLAIN, Epilogue
from kernels.epilogue import rotary as epilogue_rotary

# Decode batch sizes up to prefill's batch x sequence length; the plain linear's decode sizes (see above).
DEFAULT_M_BUCKETS = {"rms_norm_linear": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
                     "linear": (1, 2, 4, 8, 16, 32, 64)}

# The config.json fields that decide the shapes, as published for each model.
PRESETS: dict[str, dict] = {
    "llama-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000),
    "llama-13b": dict(model_type="llama", hidden_size=5120, intermediate_size=13824, num_attention_heads=40,
                      num_key_value_heads=40, vocab_size=32000),
    "mistral-7b": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=32000),
    "qwen3-0.6b": dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936),
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256),
}

_QK_NORM_MODELS = ("qwen3",)
_NXK = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class Site:
    """One tuned linear site: weight (N, K), run with `epilogue` (kernels/epilogue.py)."""
    name: str
    K: int
    N: int
    epilogue: Epilogue = PLAIN

    def __post_init__(self) -> None:
        self.epilogue.check_rows(self.N)


SITE_KERNELS = ("rms_norm_linear", "linear")


def sites_from_config(cfg: dict, source: str = "config", kernel: str = "rms_norm_linear", tp: int = 1) -> list[Site]:
    """The (K, N) of a Hugging Face decoder config's sites of `kernel`, as one of `tp` tensor-parallel ranks runs them:
    QKV and gate/up for the fused kernel, o_proj and down_proj for "linear"."""
    if kernel not in SITE_KERNELS:
        raise ValueError(f"kernel {kernel!r}: no model sites known (known: {', '.join(SITE_KERNELS)}); "
                         "pass --shapes NxK")
    cfg = cfg.get("text_config", cfg)
    need = ["hidden_size", "intermediate_size", "num_attention_heads"]
    missing = [k for k in need if not isinstance(cfg.get(k), int)]
    if missing:
        raise ValueError(f"{source}: missing integer field(s) {missing}; expected a decoder config.json")
    hidden, heads, mlp = cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"--tp: expected an int >= 1, got {tp!r}")
    # The runtime's rule (nanovllm/config.py): the heads and the MLP split evenly, KV heads split or replicated.
    if heads % tp or mlp % tp or (kv_heads % tp and tp % kv_heads):
        raise ValueError(f"{source}: --tp {tp} must divide num_attention_heads={heads} and intermediate_size={mlp}, "
                         f"and divide num_key_value_heads={kv_heads} or be a multiple of it")
    heads, kv_heads, mlp = heads // tp, max(1, kv_heads // tp), mlp // tp
    if kernel == "linear":
        return [Site("o_proj", heads * head_dim, hidden), Site("down_proj", mlp, hidden)]
    # Qwen3 normalizes q and k before the rotary embedding, so its QKV stays a plain product (nanovllm/models).
    rotary = cfg.get("model_type") not in _QK_NORM_MODELS and head_dim % 2 == 0
    try:
        qkv = Site("qkv", hidden, (heads + 2 * kv_heads) * head_dim, epilogue_rotary(head_dim, kv_heads) if rotary
                   else PLAIN)
    except ValueError as e:
        raise ValueError(f"{source}: the QKV site does not fit its heads: {e}") from None
    return [qkv, Site("gate_up", hidden, 2 * mlp, GATED)]


def parse_shapes(spec: str, kernel: str = "rms_norm_linear", tp: int = 1) -> list[Site]:
    """`llama-7b`, a config.json path, `NxK`, or a comma-separated mix; duplicates (K, N) kept once.
    Presets and config files give `kernel`'s sites on one of `tp` tensor-parallel ranks (sites_from_config); an
    `NxK` is taken as the shape it names."""
    if not spec or not spec.strip():
        raise ValueError("--shapes: empty; expected a preset, a config.json path or NxK (e.g. 12288x4096)")
    sites: list[Site] = []
    for item in (s.strip() for s in spec.split(",")):
        if item in PRESETS:
            sites += sites_from_config(PRESETS[item], item, kernel, tp)
        elif (m := _NXK.match(item)) is not None:
            N, K = int(m.group(1)), int(m.group(2))
            if N < 1 or K < 1:
                raise ValueError(f"--shapes: {item!r} has a zero dimension; expected NxK with N, K >= 1")
            sites.append(Site(f"{N}x{K}", K, N))
        elif item.endswith(".json") or Path(item).is_file():
            sites += _sites_from_file(Path(item), kernel, tp)
        else:
            raise ValueError(f"--shapes: {item!r} is not a preset ({', '.join(PRESETS)}), "
                             "an existing config.json path, or NxK (e.g. 12288x4096)")
    unique: dict[tuple[int, int], Site] = {}
    for s in sites:
        # A (K, N) named twice is tuned once, in the runtime's form where one of the two names it.
        if (s.K, s.N) not in unique or (s.epilogue.paired and not unique[(s.K, s.N)].epilogue.paired):
            unique[(s.K, s.N)] = s
    return list(unique.values())


def _sites_from_file(path: Path, kernel: str, tp: int) -> list[Site]:
    return sites_from_config(load_config(path), str(path), kernel, tp)


def load_config(path: Path) -> dict:
    """A model's config.json, or a ValueError naming --shapes."""
    try:
        cfg = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"--shapes: cannot read {path} ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--shapes: {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"--shapes: {path} holds a JSON {type(cfg).__name__}; expected a config object")
    return cfg


def is_gemm_shape(item: str) -> bool:
    """Whether a --shapes item is an NxK (a GEMM shape, no model behind it)."""
    return _NXK.match(item) is not None


def model_configs(spec: str) -> list[tuple[str, dict]]:
    """(name, config) of each preset or config.json path of `--shapes`, for the kernels whose shapes are a model's
    (attention: its heads); an NxK names no model and is refused."""
    if not spec or not spec.strip():
        raise ValueError("--shapes: empty; expected a preset or a config.json path")
    configs = []
    for item in (s.strip() for s in spec.split(",")):
        if item in PRESETS:
            configs.append((item, PRESETS[item]))
        elif is_gemm_shape(item):
            raise ValueError(f"--shapes: {item!r} is a GEMM shape (NxK); attention needs a preset "
                             f"({', '.join(PRESETS)}) or a config.json path")
        elif item.endswith(".json") or Path(item).is_file():
            configs.append((item, load_config(Path(item))))
        else:
            raise ValueError(f"--shapes: {item!r} is not a preset ({', '.join(PRESETS)}) or an existing config.json "
                             "path")
    return configs


def parse_buckets(spec: str | None, default: tuple[int, ...], option: str, example: str = "512,2048") -> list[int]:
    """`512,2048` -> [512, 2048] (sorted, once each); None -> `default`. Errors name `option`."""
    if spec is None:
        return list(default)
    try:
        values = sorted({int(v) for v in spec.split(",")})  # int() refuses an empty item
    except ValueError:
        raise ValueError(f"{option}: {spec!r} is not a comma-separated list of integers (e.g. {example})") from None
    if not values or values[0] < 1:
        raise ValueError(f"{option}: {spec!r}; expected positive integers (e.g. {example})")
    return values


def parse_m_buckets(spec: str | None, kernel: str = "rms_norm_linear") -> list[int]:
    """`1,16,256` -> [1, 16, 256]; None -> `kernel`'s default buckets."""
    return parse_buckets(spec, DEFAULT_M_BUCKETS[kernel], "--m", "1,16,256")
