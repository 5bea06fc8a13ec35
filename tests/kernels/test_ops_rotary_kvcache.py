"""The fused rotary + KV-cache write kernel against the PyTorch references (apply_rotary_reference, the HF Llama
numerics, and store_kvcache_reference)."""
import pytest
import torch

from nanovllm.layers.rotary_embedding import RotaryEmbedding
from kernels.reference import apply_rotary_and_store_kvcache_reference, apply_rotary_reference
from kernels.rotary_kvcache import apply_rotary_and_store_kvcache_triton
from tests.kernels.test_ops_layers import DTYPES, make_cos_sin_cache, rand

NUM_BLOCKS, BLOCK_SIZE = 4, 16
INDEX_DTYPES = [torch.int64, torch.int32]
ROPE_PARAMS = {
    "default": dict(rope_type="default", rope_theta=10000.0),
    # A small original context, so that most frequencies are scaled or blended.
    "llama3": dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64),
}


def assert_rotated_like_reference(got, expected, inputs):
    """Bit-exact in Triton's CPU interpreter, which rounds every product to the activation dtype as HF does. A GPU may
    contract one of the products q*cos and rot(q)*sin into an FMA, skipping that rounding, which moves the result by
    up to eps * |q| (not eps * |out|)."""
    if got.device.type == "cpu":
        assert torch.equal(got, expected)
        return
    atol = 2 * torch.finfo(expected.dtype).eps * inputs.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)


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


def run_both(q, k, v, positions, cos_sin_cache, slots, k_cache, v_cache):
    """The kernel on the given caches and the reference on copies; returns (q_out, reference q, reference caches)."""
    ref_k_cache, ref_v_cache = k_cache.clone(), v_cache.clone()
    ref_q = apply_rotary_and_store_kvcache_reference(q, k, v, positions, cos_sin_cache, ref_k_cache, ref_v_cache,
                                                     slots)
    got_q = apply_rotary_and_store_kvcache_triton(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slots)
    return got_q, ref_q, ref_k_cache, ref_v_cache


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens,num_heads,num_kv_heads,head_dim", [
    (7, 8, 2, 64),    # GQA, odd token count
    (1, 4, 4, 128),   # one decode token, MHA
    (13, 6, 3, 96),   # head counts and head_dim/2 that are not powers of two: masked lanes
])
@pytest.mark.parametrize("qk_contiguous", [False, True])  # Qwen3's q/k norm hands over contiguous q and k
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_matches_reference(device, dtype, num_tokens, num_heads, num_kv_heads, head_dim, qk_contiguous, index_dtype):
    torch.manual_seed(0)
    q, k, v = qkv_views(num_tokens, num_heads, num_kv_heads, head_dim, dtype, device)
    if qk_contiguous:
        q, k = q.contiguous(), k.contiguous()
    positions = torch.randint(0, 500, (num_tokens,), dtype=index_dtype, device=device)
    cos_sin_cache = make_cos_sin_cache(512, head_dim).to(device)
    slots = slots_with_padding(num_tokens, device).to(index_dtype)
    k_cache = rand(NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, head_dim, dtype=dtype, device=device)
    v_cache = rand(NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, head_dim, dtype=dtype, device=device)
    k_before, v_before = k_cache.clone(), v_cache.clone()

    got_q, ref_q, ref_k_cache, ref_v_cache = run_both(q, k, v, positions, cos_sin_cache, slots, k_cache, v_cache)

    assert got_q.is_contiguous() and got_q.dtype == dtype
    assert k_cache.dtype == dtype and v_cache.dtype == dtype
    assert_rotated_like_reference(got_q, ref_q, q)
    assert_rotated_like_reference(k_cache, ref_k_cache, k)
    assert torch.equal(v_cache, ref_v_cache)
    # Padding rows and every other slot keep what was there.
    untouched = torch.ones(NUM_BLOCKS * BLOCK_SIZE, dtype=torch.bool, device=device)
    untouched[slots[slots >= 0].long()] = False
    assert torch.equal(k_cache.view(-1, num_kv_heads, head_dim)[untouched],
                       k_before.view(-1, num_kv_heads, head_dim)[untouched])
    assert torch.equal(v_cache.view(-1, num_kv_heads, head_dim)[untouched],
                       v_before.view(-1, num_kv_heads, head_dim)[untouched])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rope", ROPE_PARAMS)
def test_runtime_cos_sin_tables_match_reference(device, dtype, rope):
    # The tables the model runner builds, with positions well past llama3's original context.
    torch.manual_seed(0)
    q, k, v = qkv_views(9, 4, 2, 128, dtype, device)
    cos_sin_cache = RotaryEmbedding(128, 512, ROPE_PARAMS[rope]).cos_sin_cache.to(device)
    positions = torch.tensor([0, 1, 31, 63, 64, 100, 255, 400, 511], device=device)
    slots = torch.arange(9, device=device) * 7
    k_cache, v_cache = (torch.zeros(NUM_BLOCKS, BLOCK_SIZE, 2, 128, dtype=dtype, device=device) for _ in range(2))

    got_q, ref_q, ref_k_cache, ref_v_cache = run_both(q, k, v, positions, cos_sin_cache, slots, k_cache, v_cache)

    assert_rotated_like_reference(got_q, ref_q, q)
    assert_rotated_like_reference(k_cache, ref_k_cache, k)
    assert torch.equal(v_cache, ref_v_cache)


@pytest.mark.parametrize("dtype", DTYPES)
def test_writes_each_token_to_its_slot(device, dtype):
    # Spot checks that do not go through store_kvcache_reference: slot s is block s // 16, offset s % 16.
    q, k, v = qkv_views(6, 4, 2, 64, dtype, device)
    positions = torch.tensor([0, 9, 3, 31, 17, 5], dtype=torch.int32, device=device)
    slots = torch.tensor([37, -1, 0, 63, 16, -1], dtype=torch.int32, device=device)
    cos_sin_cache = make_cos_sin_cache(32, 64).to(device)
    k_cache, v_cache = (torch.zeros(NUM_BLOCKS, BLOCK_SIZE, 2, 64, dtype=dtype, device=device) for _ in range(2))

    got_q = apply_rotary_and_store_kvcache_triton(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slots)

    expected_q, expected_k = apply_rotary_reference(q, k, positions, cos_sin_cache)
    assert_rotated_like_reference(got_q, expected_q, q)
    for token, (block, offset) in {0: (2, 5), 2: (0, 0), 3: (3, 15), 4: (1, 0)}.items():
        assert_rotated_like_reference(k_cache[block, offset], expected_k[token], k)
        assert torch.equal(v_cache[block, offset], v[token])
    written = torch.zeros(NUM_BLOCKS * BLOCK_SIZE, dtype=torch.bool, device=device)
    written[[37, 0, 63, 16]] = True
    assert torch.count_nonzero(k_cache.view(-1, 2, 64)[~written]) == 0
    assert torch.count_nonzero(v_cache.view(-1, 2, 64)[~written]) == 0

    empty_q = apply_rotary_and_store_kvcache_triton(q[:0], k[:0], v[:0], positions[:0], cos_sin_cache, k_cache,
                                                    v_cache, slots[:0])
    assert empty_q.shape == (0, 4, 64)


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
