"""RMSNorm and SiLU-mul kernels against the PyTorch references, the rotary reference against HF Llama, and the CPU
dispatch. The fused rotary + KV-cache write kernel is tested in test_ops_rotary_kvcache.py."""
import pytest
import torch

from kernels.ops import apply_rotary_and_store_kvcache, rms_norm, silu_and_mul
from kernels.activation import silu_and_mul_triton
from kernels.norm import rms_norm_triton
from kernels.reference import apply_rotary_reference, rms_norm_reference, silu_and_mul_reference

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


def make_cos_sin_cache(max_positions, head_dim, base=10000.0):
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    freqs = torch.arange(max_positions).float()[:, None] * inv_freq[None, :]
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


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
