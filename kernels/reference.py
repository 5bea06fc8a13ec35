"""The PyTorch references of every kernel in this folder.

- The fused RMSNorm + Linear: a float64 oracle (`reference_rms_norm_linear`), what users run today
  (`baseline_rms_norm_linear`) and the norm's gain folded into W (`fold_norm_weight`).
- The runtime's ops (`*_reference`): Hugging Face's numerics (Llama's RMSNorm, rotary embedding and MLP), the
  ground truth of the kernel tests and the CPU path of `kernels.ops`, so a model run on the CPU matches
  transformers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fold_norm_weight(weight: torch.Tensor, norm_weight: torch.Tensor) -> torch.Tensor:
    """W*[n, k] = W[n, k] * g[k]: the RMSNorm gain folded into the next linear layer (FlashNorm)."""
    if weight.dim() != 2 or norm_weight.shape != (weight.shape[1],):
        raise ValueError(
            f"norm_weight: expected shape ({weight.shape[-1]},) to fold into weight {tuple(weight.shape)}, "
            f"got {tuple(norm_weight.shape)}")
    return (weight.float() * norm_weight.float()[None, :]).to(weight.dtype)


def reference_rms_norm_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    norm_weight: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The same function in float64 on the CPU; returns float64 tensors."""
    h = x.double().cpu()
    if residual is not None:
        h = h + residual.double().cpu()
    y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if norm_weight is not None:
        y = y * norm_weight.double().cpu()
    out = y @ weight.double().cpu().T
    if bias is not None:
        out = out + bias.double().cpu()
    return (out, h) if residual is not None else out


def baseline_rms_norm_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    norm_weight: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """F.rms_norm (after the residual add) then F.linear: the unfused path of today's runtimes."""
    h = x + residual if residual is not None else x
    y = F.rms_norm(h, (h.shape[-1],), norm_weight.to(h.dtype) if norm_weight is not None else None, eps)
    out = F.linear(y, weight, bias.to(h.dtype) if bias is not None else None)
    return (out, h) if residual is not None else out



def store_kvcache_reference(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            slot_mapping: torch.Tensor) -> None:
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, num_kv_heads, head_dim)[slots] = k[valid].to(k_cache.dtype)
    v_cache.view(-1, num_kv_heads, head_dim)[slots] = v[valid].to(v_cache.dtype)


def _gather_kv(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    block_size = cache.shape[1]
    num_blocks = (seq_len + block_size - 1) // block_size
    blocks = block_table[:num_blocks].long()
    return cache[blocks].reshape(-1, cache.shape[2], cache.shape[3])[:seq_len]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, scale: float,
            sliding_window: int | None) -> torch.Tensor:
    """q [Lq, Hq, D] at absolute `positions` over k, v [Lk, Hkv, D] holding positions 0..Lk-1."""
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    key_pos = torch.arange(k.shape[0], device=q.device)
    visible = key_pos[None, :] <= positions[:, None]
    if sliding_window is not None:
        visible &= key_pos[None, :] > positions[:, None] - sliding_window
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v).to(q.dtype)


def paged_prefill_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                      block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor,
                                      seq_lens: torch.Tensor, scale: float,
                                      sliding_window: int | None = None) -> torch.Tensor:
    o = torch.empty_like(q)
    starts = cu_seqlens_q.tolist()
    for b, seq_len in enumerate(seq_lens.tolist()):
        start, end = starts[b], starts[b + 1]
        positions = torch.arange(seq_len - (end - start), seq_len, device=q.device)
        k = _gather_kv(k_cache, block_tables[b], seq_len)
        v = _gather_kv(v_cache, block_tables[b], seq_len)
        o[start:end] = _attend(q[start:end], k, v, positions, scale, sliding_window)
    return o


def paged_decode_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                     block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                                     sliding_window: int | None = None) -> torch.Tensor:
    cu_seqlens_q = torch.arange(q.shape[0] + 1, dtype=torch.int32, device=q.device)
    return paged_prefill_attention_reference(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale,
                                             sliding_window)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float,
                       residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    h = x if residual is None else x + residual
    h32 = h.float()
    y = (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight
    return y if residual is None else (y, h)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_reference(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                           cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # HF casts cos/sin to the activation dtype and rotates in that dtype; doing the same keeps us bit-exact.
    cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)
    cos = torch.cat((cos, cos), dim=-1).unsqueeze(1).to(q.dtype)
    sin = torch.cat((sin, sin), dim=-1).unsqueeze(1).to(q.dtype)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def apply_rotary_and_store_kvcache_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                             positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                                             k_cache: torch.Tensor, v_cache: torch.Tensor,
                                             slot_mapping: torch.Tensor) -> torch.Tensor:
    q, k = apply_rotary_reference(q, k, positions, cos_sin_cache)
    store_kvcache_reference(k, v, k_cache, v_cache, slot_mapping)
    return q


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def gumbel_argmax_reference(logits: torch.Tensor, temperatures: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """argmax(logits / T + Gumbel(noise)) per row, or argmax(logits) where T == 0.

    With Gumbel noise -log(-log(u)), u ~ U(0, 1), the argmax is a sample from softmax(logits / T).
    """
    greedy = temperatures == 0
    t = torch.where(greedy, torch.ones_like(temperatures), temperatures)[:, None]
    gumbel = -torch.log(-torch.log(noise))
    scores = torch.where(greedy[:, None], logits, logits / t + gumbel)
    return scores.argmax(dim=-1)
