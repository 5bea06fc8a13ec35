"""The engine's settings (`LLM(path, **kwargs)`), each checked up front with an error naming it."""
import json
import numbers
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from nanovllm.models import MODEL_REGISTRY
from tuning_table import FusionOptions, LookupTable, load_named_table


def _is_int(value: object, minimum: int) -> bool:
    # bool is an int subclass, but max_num_seqs=True is a mistake, not a 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


@dataclass
class Config:
    """Engine settings, checked up front so that a bad value fails with a message naming it."""

    model: str
    dtype: torch.dtype | str | None = None
    device: torch.device | str | None = None
    # None: 4096, or the model's max_position_embeddings where that is less; a longer one given is cut to it.
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 16384
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    kvcache_block_size: int = 16
    # None sizes the cache from free GPU memory (CUDA) or from max_num_seqs * max_model_len (CPU).
    num_kvcache_blocks: int | None = None
    # RMSNorm + QKV and RMSNorm + gate/up projections through one fused kernel (False: separate norm and GEMM).
    fused_norm_linear: bool = True
    # The fused kernel's tuned configs: a lookup table path, None to find the GPU's (tuning_table/find.py),
    # False for none: the shipped tables' nearest tuned configs (tuning_table/learned.py), else the default configs.
    tuning_table: str | os.PathLike | bool | None = None
    # Which M run the tuned kernels (tuning_table/select.py).
    fusion: FusionOptions = field(default_factory=FusionOptions)
    # Ranks the model is split across, one process each (nanovllm/engine/tensor_parallel.py); on CUDA rank r runs on
    # cuda:r.
    tensor_parallel_size: int = 1
    hf_config: PretrainedConfig = field(init=False)
    # The table `tuning_table` or $NANOVLLM_TUNING_TABLE names, read once here (tuning_table.load_named_table).
    named_table: tuple[Path, LookupTable] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        config_file = os.path.join(str(self.model), "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"model_path {self.model!r} is not a folder with a config.json")
        try:
            with open(config_file) as f:
                hf = json.load(f)
        except ValueError as e:  # not JSON, or not UTF-8 text
            raise ValueError(f"cannot parse {config_file}: {e}") from None
        if not isinstance(hf, dict):
            raise ValueError(f"cannot parse {config_file}: not a JSON object")
        architectures = hf.get("architectures") or []
        if not isinstance(architectures, list):  # a bare string would be searched letter by letter
            raise ValueError(f"{config_file}: 'architectures' must be a list of class names, got {architectures!r}")
        if not any(a in MODEL_REGISTRY for a in architectures):
            raise ValueError(
                f"unsupported architecture {architectures} in {config_file}; supported: {sorted(MODEL_REGISTRY)}"
            )
        self.hf_config = AutoConfig.from_pretrained(self.model)
        device = self.device
        try:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except (RuntimeError, TypeError):  # torch's own message lists every device type it knows
            self.device = None
        if self.device is None or self.device.type not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda', 'cuda:N' or 'cpu', got {device!r}")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but torch sees no CUDA device")
        self.dtype = self._resolve_dtype()
        max_positions = self.hf_config.max_position_embeddings
        if self.max_model_len is None:
            self.max_model_len = min(4096, max_positions)
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "kvcache_block_size"):
            if not _is_int(getattr(self, name), 1):
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
            setattr(self, name, int(getattr(self, name)))  # numpy's ints pass as ints; the engine wants Python's
        utilization = self.gpu_memory_utilization
        if not (isinstance(utilization, numbers.Real) and not isinstance(utilization, bool) and 0 < utilization <= 1):
            raise ValueError(f"gpu_memory_utilization must be a float in (0, 1], got {utilization!r}")
        size = self.kvcache_block_size
        if size & (size - 1):
            raise ValueError(f"kvcache_block_size must be a power of two, got {size}")
        if not (self.num_kvcache_blocks is None or _is_int(self.num_kvcache_blocks, 1)):
            raise ValueError(f"num_kvcache_blocks must be an int >= 1 or None, got {self.num_kvcache_blocks!r}")
        if self.num_kvcache_blocks is not None:
            self.num_kvcache_blocks = int(self.num_kvcache_blocks)
        for name in ("enforce_eager", "fused_norm_linear"):
            if not isinstance(getattr(self, name), bool):  # a truthy string such as "no" would turn it on
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        table = self.tuning_table
        if not (table is None or table is False or isinstance(table, (str, os.PathLike))):
            raise ValueError(f"tuning_table must be a path, None (find the GPU's table) or False, got {table!r}")
        if not isinstance(self.fusion, FusionOptions):
            raise ValueError(f"fusion must be a tuning_table.FusionOptions, got {self.fusion!r}")
        if table is not None and table is not False and not self.fused_norm_linear:
            raise ValueError("tuning_table is given but fused_norm_linear=False: it only configures the fused kernel")
        self._read_named_table()
        self._check_tensor_parallel()
        if self.max_model_len > max_positions:
            warnings.warn(f"max_model_len={self.max_model_len} is more than the model's max_position_embeddings="
                          f"{max_positions}: using {max_positions}", stacklevel=4)
            self.max_model_len = max_positions

    def _read_named_table(self) -> None:
        """Read a table named by the argument or the environment now, once (the runner and the ranks take it from
        here), before the weights load and the ranks start, so that a wrong path or a malformed file fails at once,
        saying where the path came from. The card's shipped table is checked by the tests instead."""
        if self.fused_norm_linear:
            self.named_table = load_named_table(self.tuning_table)

    def _check_tensor_parallel(self) -> None:
        """The model must split evenly: q heads and the MLP's columns by rank, KV heads too, or, where there are fewer
        of them than ranks, each KV head replicated on the same number of ranks (as vLLM does)."""
        tp = self.tensor_parallel_size
        if not _is_int(tp, 1):
            raise ValueError(f"tensor_parallel_size must be an int >= 1, got {tp!r}")
        self.tensor_parallel_size = tp = int(tp)
        hf = self.hf_config
        heads, mlp = hf.num_attention_heads, hf.intermediate_size
        kv_heads = hf.num_key_value_heads or heads
        if heads % tp or mlp % tp or (kv_heads % tp and tp % kv_heads):
            raise ValueError(f"tensor_parallel_size={tp} must divide the model's num_attention_heads={heads} and "
                             f"intermediate_size={mlp}, and divide its num_key_value_heads={kv_heads} or be a "
                             "multiple of it")
        if tp > 1 and self.device.type == "cuda":
            if self.device.index is not None:
                raise ValueError(f"device={str(self.device)!r} names one GPU, but rank r of tensor_parallel_size={tp} "
                                 "runs on cuda:r: pick the GPUs with CUDA_VISIBLE_DEVICES")
            if torch.cuda.device_count() < tp:
                raise ValueError(f"tensor_parallel_size={tp} needs {tp} CUDA devices, torch sees "
                                 f"{torch.cuda.device_count()}")

    def _resolve_dtype(self) -> torch.dtype:
        dtype = self.dtype
        if dtype is None:
            if self.device.type == "cpu":
                return torch.float32
            dtype = getattr(self.hf_config, "dtype", None) or getattr(self.hf_config, "torch_dtype", None)
            dtype = dtype or torch.float32
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype.removeprefix("torch."), None)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        return dtype
