"""KV-cache store, RMSNorm, rotary embedding and SiLU-mul kernels against the PyTorch references."""
import pytest
import torch

from nanovllm.ops import apply_rotary_and_store_kvcache, rms_norm, silu_and_mul
from nanovllm.ops.activation import silu_and_mul_triton
from nanovllm.ops.kv_cache import store_kvcache_triton
from nanovllm.ops.norm import rms_norm_triton
from nanovllm.ops.reference import (apply_rotary_reference, rms_norm_reference, silu_and_mul_reference,
                                    store_kvcache_reference)
from nanovllm.ops.rotary import apply_rotary_triton

CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])


def rand(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape).to(dtype).to(device)


def assert_close_to_rounding(got, expected):
    """Equal up to two units in the last place: the kernel's sum order, rsqrt and exp are not torch's,
    so an intermediate rounded to the activation dtype may land one step away before the last product."""
    rtol = max(2 * torch.finfo(expected.dtype).eps, 1.3e-6)
    torch.testing.assert_close(got, expected, rtol=rtol, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_store_kvcache_writes_slots_and_skips_padding(device, dtype, head_dim):
    k, v = rand(6, 2, head_dim, dtype=dtype, device=device), rand(6, 2, head_dim, dtype=dtype, device=device)
    k_cache = rand(4, 16, 2, head_dim, dtype=dtype, device=device)
    v_cache = rand(4, 16, 2, head_dim, dtype=dtype, device=device)
    slots = torch.tensor([37, -1, 0, 63, 16, -1], device=device)
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    store_kvcache_reference(k, v, k_expected, v_expected, slots)
    store_kvcache_triton(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_expected) and torch.equal(v_cache, v_expected)
    assert torch.equal(k_cache[2, 5], k[0]) and torch.equal(v_cache[1, 0], v[4])


def test_store_kvcache_from_strided_views(device):
    # k and v come out of the fused qkv projection as views with a row stride larger than Hkv * D.
    qkv = rand(5, 4 * 32 + 2 * 2 * 32, device=device)
    k = qkv[:, 128:192].view(5, 2, 32)
    v = qkv[:, 192:].view(5, 2, 32)
    k_cache, v_cache = rand(2, 16, 2, 32, device=device), rand(2, 16, 2, 32, device=device)
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    slots = torch.arange(5, device=device) * 3
    store_kvcache_reference(k, v, k_expected, v_expected, slots)
    store_kvcache_triton(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_expected) and torch.equal(v_cache, v_expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [96, 256])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference(device, dtype, hidden, with_residual):
    x, weight = rand(7, hidden, dtype=dtype, device=device), rand(hidden, dtype=dtype, device=device)
    residual = rand(7, hidden, dtype=dtype, device=device) if with_residual else None
    got = rms_norm_triton(x, weight, 1e-6, residual)
    expected = rms_norm_reference(x, weight, 1e-6, residual)
    if with_residual:
        assert torch.equal(got[1], expected[1])
        got, expected = got[0], expected[0]
    assert_close_to_rounding(got, expected)


def assert_close_to_products(got, expected, inputs):
    """Equal up to two roundings of the products q*cos and rot(q)*sin: the GPU may contract one of them
    into an FMA, skipping the rounding HF does, which moves the result by up to eps * |q| (not eps * |out|)."""
    atol = 2 * torch.finfo(expected.dtype).eps * inputs.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)


def make_cos_sin_cache(max_positions, head_dim, base=10000.0):
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    freqs = torch.arange(max_positions).float()[:, None] * inv_freq[None, :]
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rotary_matches_reference(device, dtype, head_dim):
    q, k = rand(9, 4, head_dim, dtype=dtype, device=device), rand(9, 2, head_dim, dtype=dtype, device=device)
    positions = torch.randint(0, 500, (9,), device=device)
    cache = make_cos_sin_cache(512, head_dim).to(device)
    got_q, got_k = apply_rotary_triton(q, k, positions, cache)
    expected_q, expected_k = apply_rotary_reference(q, k, positions, cache)
    assert_close_to_products(got_q, expected_q, q)
    assert_close_to_products(got_k, expected_k, k)


def test_rotary_reads_strided_views_of_qkv(device):
    qkv = rand(6, (4 + 2 + 2) * 64, device=device)
    q, k = qkv[:, :256].view(6, 4, 64), qkv[:, 256:384].view(6, 2, 64)
    positions = torch.arange(6, device=device) * 7
    cache = make_cos_sin_cache(64, 64).to(device)
    got_q, got_k = apply_rotary_triton(q, k, positions, cache)
    expected_q, expected_k = apply_rotary_reference(q, k, positions, cache)
    assert_close_to_products(got_q, expected_q, q)
    assert_close_to_products(got_k, expected_k, k)


def test_rotary_reference_is_hf_llama():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k = rand(5, 4, 64, dtype=torch.float16), rand(5, 2, 64, dtype=torch.float16)
    positions = torch.tensor([0, 3, 7, 100, 2047])
    cache = make_cos_sin_cache(2048, 64)
    cos = torch.cat([cache[positions, :32]] * 2, dim=-1).to(torch.float16)
    sin = torch.cat([cache[positions, 32:]] * 2, dim=-1).to(torch.float16)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
    got_q, got_k = apply_rotary_reference(q, k, positions, cache)
    assert torch.equal(got_q, hf_q) and torch.equal(got_k, hf_k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_matches_reference(device, dtype):
    x = rand(5, 2 * 1500, dtype=dtype, device=device) * 3
    assert_close_to_rounding(silu_and_mul_triton(x), silu_and_mul_reference(x))


def test_dispatch_runs_references_on_cpu():
    x, weight = rand(3, 32), rand(32)
    torch.testing.assert_close(rms_norm(x, weight, 1e-5), rms_norm_reference(x, weight, 1e-5))
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_reference(x))
    q, k, v = rand(3, 2, 32), rand(3, 1, 32), rand(3, 1, 32)
    positions, cache = torch.tensor([0, 1, 5]), make_cos_sin_cache(8, 32)
    k_cache, v_cache = torch.zeros(1, 16, 1, 32), torch.zeros(1, 16, 1, 32)
    got_q = apply_rotary_and_store_kvcache(q, k, v, positions, cache, k_cache, v_cache, torch.tensor([2, -1, 4]))
    expected_q, expected_k = apply_rotary_reference(q, k, positions, cache)
    assert torch.equal(got_q, expected_q)
    assert torch.equal(k_cache[0, 2], expected_k[0]) and torch.equal(v_cache[0, 4], v[2])
    assert torch.count_nonzero(k_cache[0, [0, 1, 3, *range(5, 16)]]) == 0


def test_bad_arguments_name_the_argument(device):
    with pytest.raises(ValueError, match="weight must have shape"):
        rms_norm_triton(rand(2, 8, device=device), rand(4, device=device), 1e-6)
    with pytest.raises(ValueError, match="even last dimension"):
        silu_and_mul_triton(rand(2, 7, device=device))
    with pytest.raises(ValueError, match="cos_sin_cache must be"):
        q = rand(2, 2, 8, device=device)
        apply_rotary_triton(q, q, torch.zeros(2, dtype=torch.int64, device=device), rand(4, 6, device=device))
    with pytest.raises(ValueError, match="slot_mapping must have shape"):
        k = rand(3, 1, 8, device=device)
        cache = rand(1, 16, 1, 8, device=device)
        store_kvcache_triton(k, k, cache, cache.clone(), torch.zeros(2, dtype=torch.int64, device=device))
