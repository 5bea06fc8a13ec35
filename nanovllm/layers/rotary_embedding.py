"""The rotary position embedding's cos | sin table, with the scaling variants of the supported checkpoints."""
import math

import torch
from torch import nn
from transformers import PretrainedConfig

SUPPORTED_ROPE_TYPES = ("default", "llama3")


def rope_parameters(config: PretrainedConfig) -> dict:
    """rope_theta and rope scaling as one dict, from transformers 5 (`rope_parameters`) or 4 (`rope_scaling`)."""
    params = getattr(config, "rope_parameters", None)
    if not params:
        params = {**(getattr(config, "rope_scaling", None) or {}), "rope_theta": config.rope_theta}
    params = dict(params)
    params.setdefault("rope_type", params.get("type", "default"))
    if params["rope_type"] not in SUPPORTED_ROPE_TYPES:
        raise NotImplementedError(
            f"rope type {params['rope_type']!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}")
    return params


def _llama3_inv_freq(inv_freq: torch.Tensor, params: dict) -> torch.Tensor:
    """Llama 3.1 scaling: long wavelengths divided by `factor`, short ones kept, a smooth blend in between."""
    factor = params["factor"]
    low_freq_wavelen = params["original_max_position_embeddings"] / params["low_freq_factor"]
    high_freq_wavelen = params["original_max_position_embeddings"] / params["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (params["original_max_position_embeddings"] / wavelen - params["low_freq_factor"]) / (
        params["high_freq_factor"] - params["low_freq_factor"])
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """The float32 [max_position, head_dim] table of cos | sin of a Neox-style rotary embedding. Attention applies it
    in the kernel that writes the KV cache (ops.apply_rotary_and_store_kvcache)."""

    def __init__(self, head_dim: int, max_position: int, params: dict):
        super().__init__()
        inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        if params["rope_type"] == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, params)
        freqs = torch.arange(max_position, dtype=torch.float32)[:, None] * inv_freq[None, :]
        self.register_buffer("cos_sin_cache", torch.cat((freqs.cos(), freqs.sin()), dim=-1), persistent=False)
