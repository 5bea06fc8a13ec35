"""The fused rotary + KV-cache write against the two ops it replaces (bit-identical) and the PyTorch reference."""
import pytest
import torch

from nanovllm.ops.kv_cache import store_kvcache_triton
from nanovllm.ops.reference import apply_rotary_and_store_kvcache_reference
from nanovllm.ops.rotary import apply_rotary_triton
from nanovllm.ops.rotary_kvcache import apply_rotary_and_store_kvcache_triton
from tests.test_ops_layers import DTYPES, assert_close_to_products, make_cos_sin_cache, rand

NUM_BLOCKS, BLOCK_SIZE = 4, 16


def qkv_views(num_tokens, num_heads, num_kv_heads, head_dim, dtype, device):
    """q, k, v as LlamaAttention gets them: strided views of the fused projection's output."""
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qkv = rand(num_tokens, q_size + 2 * kv_size, dtype=dtype, device=device)
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    return (q.view(-1, num_heads, head_dim), k.view(-1, num_kv_heads, head_dim), v.view(-1, num_kv_heads, head_dim))


def slots_with_padding(num_tokens, device):
    """Distinct random slots, every third token padding (-1) as in a CUDA graph's padded rows."""
    slots = torch.randperm(NUM_BLOCKS * BLOCK_SIZE)[:num_tokens]
    slots[1::3] = -1
    return slots.to(device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens,num_heads,num_kv_heads,head_dim", [
    (7, 8, 2, 64),    # GQA, odd token count
    (1, 4, 4, 128),   # one decode token, MHA
    (13, 6, 3, 96),   # head counts and head_dim/2 that are not powers of two: masked lanes
])
@pytest.mark.parametrize("qk_contiguous", [False, True])  # Qwen3's q/k norm hands over contiguous q and k
def test_matches_rotary_then_store_kvcache_exactly(device, dtype, num_tokens, num_heads, num_kv_heads, head_dim,
                                                   qk_contiguous):
    torch.manual_seed(0)
    q, k, v = qkv_views(num_tokens, num_heads, num_kv_heads, head_dim, dtype, device)
    if qk_contiguous:
        q, k = q.contiguous(), k.contiguous()
    positions = torch.randint(0, 500, (num_tokens,), device=device)
    cos_sin_cache = make_cos_sin_cache(512, head_dim).to(device)
    slots = slots_with_padding(num_tokens, device)
    k_cache = rand(NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, head_dim, dtype=dtype, device=device)
    v_cache = rand(NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, head_dim, dtype=dtype, device=device)
    k_before, v_before = k_cache.clone(), v_cache.clone()

    unfused_q, unfused_k = apply_rotary_triton(q, k, positions, cos_sin_cache)
    unfused_k_cache, unfused_v_cache = k_cache.clone(), v_cache.clone()
    store_kvcache_triton(unfused_k, v, unfused_k_cache, unfused_v_cache, slots)
    ref_k_cache, ref_v_cache = k_cache.clone(), v_cache.clone()
    ref_q = apply_rotary_and_store_kvcache_reference(q, k, v, positions, cos_sin_cache, ref_k_cache, ref_v_cache,
                                                     slots)
    got_q = apply_rotary_and_store_kvcache_triton(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slots)

    assert got_q.is_contiguous()
    assert torch.equal(got_q, unfused_q)
    assert torch.equal(k_cache, unfused_k_cache) and torch.equal(v_cache, unfused_v_cache)
    assert_close_to_products(got_q, ref_q, q)
    assert_close_to_products(k_cache, ref_k_cache, k)
    assert torch.equal(v_cache, ref_v_cache)
    # Padding rows and every other slot keep what was there.
    untouched = torch.ones(NUM_BLOCKS * BLOCK_SIZE, dtype=torch.bool, device=device)
    untouched[slots[slots >= 0]] = False
    assert torch.equal(k_cache.view(-1, num_kv_heads, head_dim)[untouched],
                       k_before.view(-1, num_kv_heads, head_dim)[untouched])
    assert torch.equal(v_cache.view(-1, num_kv_heads, head_dim)[untouched],
                       v_before.view(-1, num_kv_heads, head_dim)[untouched])


def test_int32_indices_and_no_tokens(device):
    q, k, v = qkv_views(5, 4, 2, 32, torch.float32, device)
    positions = torch.tensor([0, 9, 3, 31, 17], dtype=torch.int32, device=device)
    slots = torch.tensor([5, -1, 40, 0, 63], dtype=torch.int32, device=device)
    cos_sin_cache = make_cos_sin_cache(32, 32).to(device)
    k_cache, v_cache = (torch.zeros(NUM_BLOCKS, BLOCK_SIZE, 2, 32, device=device) for _ in range(2))
    got_q = apply_rotary_and_store_kvcache_triton(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slots)
    expected_q, expected_k = apply_rotary_triton(q, k, positions.long(), cos_sin_cache)
    assert torch.equal(got_q, expected_q)
    assert torch.equal(k_cache[2, 8], expected_k[2]) and torch.equal(v_cache[3, 15], v[4])

    empty_q = apply_rotary_and_store_kvcache_triton(q[:0], k[:0], v[:0], positions[:0], cos_sin_cache, k_cache,
                                                    v_cache, slots[:0])
    assert empty_q.shape == (0, 4, 32)


def bad(device, **changes):
    args = dict(q=rand(3, 4, 16, device=device), k=rand(3, 2, 16, device=device), v=rand(3, 2, 16, device=device),
                positions=torch.zeros(3, dtype=torch.int64, device=device),
                cos_sin_cache=make_cos_sin_cache(8, 16).to(device),
                k_cache=rand(2, 16, 2, 16, device=device), v_cache=rand(2, 16, 2, 16, device=device),
                slot_mapping=torch.zeros(3, dtype=torch.int64, device=device))
    return {**args, **changes}


@pytest.mark.parametrize("change,error,match", [
    (lambda d: dict(k=rand(3, 2, 16, dtype=torch.float16, device=d)), TypeError, "k must have dtype"),
    (lambda d: dict(v=rand(3, 1, 16, device=d)), ValueError, "v must have shape"),
    (lambda d: dict(q=rand(3, 3, 16, device=d)), ValueError, r"q heads \(3\) must be a multiple of k_cache"),
    (lambda d: dict(k_cache=rand(2, 16, 2, 16, dtype=torch.float16, device=d),
                    v_cache=rand(2, 16, 2, 16, dtype=torch.float16, device=d)), TypeError, "must equal k_cache dtype"),
    (lambda d: dict(v_cache=rand(2, 16, 2, 8, device=d)), ValueError, "v_cache must have shape"),
    (lambda d: dict(positions=torch.zeros(3, device=d)), TypeError, "positions must have dtype"),
    (lambda d: dict(cos_sin_cache=make_cos_sin_cache(8, 8).to(d)), ValueError, "cos_sin_cache must be"),
    (lambda d: dict(slot_mapping=torch.zeros(2, dtype=torch.int64, device=d)), ValueError,
     "slot_mapping must have shape"),
    (lambda d: dict(k_cache=rand(16, 2, 2, 16, device=d).transpose(0, 1),
                    v_cache=rand(16, 2, 2, 16, device=d).transpose(0, 1)), ValueError, "k_cache blocks must be"),
])
def test_bad_arguments_name_the_argument(device, change, error, match):
    with pytest.raises(error, match=match):
        apply_rotary_and_store_kvcache_triton(**bad(device, **change(device)))
