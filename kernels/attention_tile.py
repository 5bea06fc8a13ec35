"""The inner step shared by the paged attention kernels: one tile of keys into an online softmax.

Keys are addressed through the sequence's block table one by one (key j lives in block
table[j // BLOCK_SIZE] at offset j % BLOCK_SIZE), so a tile may span several cache blocks; each key
row is head_dim contiguous elements, which keeps the loads coalesced. Scores are in base 2: the
caller folds log2(e) into qk_scale and the softmax uses exp2.
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def attend_tile(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table_ptr, kv_head_off, start, key_end, pos,
                qk_scale, window, stride_kb, stride_ks, offs_d, mask_d,
                BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, MASKED: tl.constexpr, USE_WINDOW: tl.constexpr,
                DOT_PRECISION: tl.constexpr):
    """Fold keys start..start+BLOCK_N into (m_i, l_i, acc) for the query rows at positions pos.

    MASKED=False is the fast path for a tile every row sees in full (all keys < key_end, causal and
    window conditions true); otherwise keys >= key_end or invisible from a row's pos are dropped.
    """
    offs_n = start + tl.arange(0, BLOCK_N)
    if MASKED:
        mask_n = offs_n < key_end
        block_ids = tl.load(table_ptr + offs_n // BLOCK_SIZE, mask=mask_n, other=0)
        kv_mask = mask_n[:, None] & mask_d[None, :]
    else:
        block_ids = tl.load(table_ptr + offs_n // BLOCK_SIZE)
        kv_mask = mask_d[None, :]
    slots = block_ids.to(tl.int64) * stride_kb + (offs_n % BLOCK_SIZE) * stride_ks + kv_head_off
    k = tl.load(k_cache_ptr + slots[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if MASKED:
        visible = mask_n[None, :] & (offs_n[None, :] <= pos[:, None])
        if USE_WINDOW:
            visible &= offs_n[None, :] > pos[:, None] - window
        qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    v = tl.load(v_cache_ptr + slots[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i * alpha + tl.sum(p, axis=1), acc
