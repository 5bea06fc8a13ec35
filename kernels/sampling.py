"""Token sampling: top-k/top-p masking in torch when a row asks for it, then one Gumbel-max pass.

argmax(logits / T - log(-log(u))) with u ~ U(0, 1) is a sample from softmax(logits / T), so sampling
needs no softmax, no sort and no cumulative sum over the vocabulary unless top-k/top-p is on. The
uniform noise comes from torch (per-request generators give reproducible samples); the kernel fuses
the temperature, the noise transform and the argmax, and takes the plain argmax where T == 0.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.pdl import pdl_launch_args, pdl_wait
from kernels.reference import gumbel_argmax_reference
from kernels.validation import check_shape, check_tensor


# Each program scans one chunk of a row, so a small batch still spreads over many SMs; torch then
# picks the best chunk (first on ties, like torch.argmax, since chunks keep their first maximum).
CHUNK = 4096


@triton.jit
def _gumbel_argmax_kernel(logits_ptr, temp_ptr, noise_ptr, val_ptr, idx_ptr, stride_l, stride_n, V, num_chunks,
                          CHUNK: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    t = tl.load(temp_ptr + row)
    greedy = t == 0.0
    # Greedy rows skip the noise: its loads are masked off by a zero bound.
    noise_end = tl.where(greedy, 0, V)
    t = tl.where(greedy, 1.0, t)
    best_val = tl.full((), float("-inf"), tl.float32)
    best_idx = tl.full((), 0, tl.int32) + chunk * CHUNK
    for start in range(chunk * CHUNK, tl.minimum(chunk * CHUNK + CHUNK, V), BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < V
        logits = tl.load(logits_ptr + row * stride_l + offs, mask=mask, other=float("-inf"))
        u = tl.load(noise_ptr + row * stride_n + offs, mask=offs < noise_end, other=0.5)
        scores = tl.where(greedy, logits, logits / t - tl.log(-tl.log(u)))
        scores = tl.where(mask, scores, float("-inf"))
        val, idx = tl.max(scores, axis=0, return_indices=True)
        # Strictly greater keeps the first maximum, like torch.argmax.
        take = val > best_val
        best_idx = tl.where(take, start + idx, best_idx)
        best_val = tl.where(take, val, best_val)
    tl.store(val_ptr + row * num_chunks + chunk, best_val)
    tl.store(idx_ptr + row * num_chunks + chunk, best_idx.to(tl.int64))


def gumbel_argmax_triton(logits: torch.Tensor, temperatures: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    check_tensor("logits", logits, 2, (torch.float32,), logits.device)
    check_tensor("temperatures", temperatures, 1, (torch.float32,), logits.device)
    check_shape("temperatures", temperatures, (logits.shape[0],))
    check_tensor("noise", noise, 2, (torch.float32,), logits.device)
    check_shape("noise", noise, tuple(logits.shape))
    batch, vocab = logits.shape
    if batch == 0:
        return torch.empty(0, dtype=torch.int64, device=logits.device)
    num_chunks = triton.cdiv(vocab, CHUNK)
    vals = torch.empty((batch, num_chunks), dtype=torch.float32, device=logits.device)
    idxs = torch.empty((batch, num_chunks), dtype=torch.int64, device=logits.device)
    _gumbel_argmax_kernel[(batch, num_chunks)](logits, temperatures, noise, vals, idxs, logits.stride(0),
                                               noise.stride(0), vocab, num_chunks, CHUNK=CHUNK, BLOCK=1024,
                                               num_warps=4, **pdl_launch_args(logits.device))
    return idxs.gather(1, vals.argmax(dim=1, keepdim=True)).squeeze(1)


def apply_top_k_top_p(logits: torch.Tensor, temperatures: torch.Tensor, top_ks: torch.Tensor,
                      top_ps: torch.Tensor) -> torch.Tensor:
    """Set to -inf the logits outside each row's top-k and top-p nucleus (of softmax(logits / T))."""
    vocab = logits.shape[1]
    scaled = logits / torch.where(temperatures == 0, 1.0, temperatures)[:, None]
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)
    k = torch.where(top_ks > 0, top_ks, vocab).clamp(max=vocab).to(logits.device)
    drop = ranks[None, :] >= k[:, None]
    probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    # HF's nucleus: the fewest top tokens whose mass reaches top_p. A token goes when the tokens ranked
    # above it already hold top_p; the first always stays. Rows at 1.0 are left whole despite rounding.
    top_ps = top_ps.to(logits.device)[:, None]
    drop |= ((probs.cumsum(dim=-1) - probs) >= top_ps) & (top_ps < 1.0)
    return logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))


def _uniform_noise(logits: torch.Tensor, generators: list[torch.Generator | None] | None) -> torch.Tensor:
    if generators is None or all(g is None for g in generators):
        return torch.rand(logits.shape, device=logits.device)
    if len(generators) != logits.shape[0]:
        raise ValueError(f"generators must have one entry per row ({logits.shape[0]}), got {len(generators)}")
    return torch.stack([torch.rand(logits.shape[1], generator=g, device=logits.device) for g in generators])


def sample(logits: torch.Tensor, temperatures: torch.Tensor, top_ks: torch.Tensor, top_ps: torch.Tensor,
           generators: list[torch.Generator | None] | None = None, *, filtered: bool | None = None) -> torch.Tensor:
    """Sample one token id per row of logits [B, V] (float32); temperature 0 means greedy.

    top_ks [B] (-1: off) and top_ps [B] (1.0: off) restrict the candidates; generators (one per row,
    or None) make a row's draw reproducible. filtered: whether any row has top-k or top-p on, when the caller
    knows; None reads it off top_ks and top_ps, which waits for the GPU. Returns int64 token ids [B].
    """
    check_tensor("logits", logits, 2, (torch.float32,), logits.device)
    batch = logits.shape[0]
    check_tensor("temperatures", temperatures, 1, (torch.float32,), logits.device)
    check_shape("temperatures", temperatures, (batch,))
    check_tensor("top_ks", top_ks, 1, (torch.int32, torch.int64), logits.device)
    check_shape("top_ks", top_ks, (batch,))
    check_tensor("top_ps", top_ps, 1, (torch.float32, torch.float64), logits.device)
    check_shape("top_ps", top_ps, (batch,))
    if filtered is None:
        filtered = bool(((top_ks > 0) & (top_ks < logits.shape[1])).any() | (top_ps < 1.0).any())
    if filtered:
        logits = apply_top_k_top_p(logits, temperatures, top_ks, top_ps)
    noise = _uniform_noise(logits, generators)
    fn = gumbel_argmax_triton if logits.is_cuda else gumbel_argmax_reference
    return fn(logits, temperatures, noise)
