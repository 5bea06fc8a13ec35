"""The fused RMSNorm+Linear with the rotary embedding and the KV-cache write in its epilogue (a rotary
epilogue with its RotaryKV buffers, the attention's QKV site) against the same kernel without it followed by the reference rotary + cache write."""
import dataclasses

import pytest
import torch

from kernels.config import Config
from kernels.epilogue import GATED, rotary as rotary_epilogue
from kernels.paired import RotaryKV
from kernels.rms_norm_linear import fused_rms_norm_linear
from nanovllm.layers.rotary_embedding import RotaryEmbedding
from kernels.reference import apply_rotary_and_store_kvcache_reference
from tests.conftest import DEVICE
from tests.kernels.test_fusion_kernel import DTYPES, REL_TOL, _poison_buffers, make_inputs  # noqa: F401

HQ, HKV, D, K = 4, 2, 64, 64
ROT = rotary_epilogue(D, HKV)
STACKED = [  # configs as tuned for the stacked [q; k; v] product
    Config(16, 64, 64, num_warps=2, num_stages=2, GROUP_M=1),
    Config(16, 128, 32, num_warps=4, num_stages=3, GROUP_M=4, SUMSQ_IN_LOOP=1),
    Config(32, 256, 64, num_warps=4, num_stages=1, GROUP_M=1),  # halves to 128, then to 32 to fit head_dim/2
    # GEMV-like row tiles, the eviction hint
    Config(4, 64, 64, num_warps=2, num_stages=1, GROUP_M=1, EVICT=1),
    Config(8, 128, 32, num_warps=1, num_stages=6, GROUP_M=2, SUMSQ_IN_LOOP=1),
]


def make_rotary(M: int, dtype: torch.dtype, seed: int = 3) -> RotaryKV:
    g = torch.Generator().manual_seed(seed)
    # Cache contents are random, so that an element written where it must not be shows.
    cache = lambda: torch.randn(6, 4, HKV, D, generator=g).to(dtype).to(DEVICE)  # noqa: E731
    slots = torch.randperm(24, generator=g)[:M]
    slots[M // 2] = -1  # a padded token of a captured graph
    table = RotaryEmbedding(D, 256, {"rope_theta": 10000.0, "rope_type": "default"}).cos_sin_cache
    return RotaryKV(torch.randint(0, 256, (M,), generator=g).to(DEVICE), table.to(DEVICE), slots.to(DEVICE),
                    cache(), cache(), HQ)


def expected(inputs: dict, rotary: RotaryKV, stacked: Config):
    """The separate path: the plain kernel's stacked output, then the reference rotary and cache write."""
    out = fused_rms_norm_linear(**inputs, config=stacked)
    y, h = out if inputs["residual"] is not None else (out, None)
    q, k, v = y.split([HQ * D, HKV * D, HKV * D], dim=-1)
    k_cache, v_cache = rotary.k_cache.clone(), rotary.v_cache.clone()
    q = apply_rotary_and_store_kvcache_reference(q.reshape(-1, HQ, D), k.reshape(-1, HKV, D), v.reshape(-1, HKV, D),
                                                 rotary.positions, rotary.cos_sin_cache, k_cache, v_cache,
                                                 rotary.slot_mapping)
    return q, h, k_cache, v_cache


@pytest.mark.parametrize("stacked", STACKED, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias,residual", [(False, False), (True, True)])
def test_q_comes_out_rotated_and_k_v_land_in_the_cache(stacked, dtype, bias, residual):
    M = 7
    inputs = make_inputs(M, K, (HQ + 2 * HKV) * D, dtype, bias=bias, residual=residual, norm_weight=True)
    rotary = make_rotary(M, dtype)
    q_ref, h_ref, k_ref, v_ref = expected(inputs, rotary, stacked)
    got = fused_rms_norm_linear(**inputs, epilogue=ROT, rotary=rotary, config=ROT.launched(stacked))
    q, h = got if residual else (got, None)
    assert q.shape == (M, HQ, D) and q.dtype == dtype
    tol = dict(rtol=REL_TOL[dtype], atol=REL_TOL[dtype])
    torch.testing.assert_close(q, q_ref, **tol)
    if residual:
        torch.testing.assert_close(h, h_ref, rtol=0, atol=0)
    torch.testing.assert_close(rotary.k_cache, k_ref, **tol)
    torch.testing.assert_close(rotary.v_cache, v_ref, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_config_and_precomputed_statistics(dtype):
    inputs = make_inputs(3, K, (HQ + 2 * HKV) * D, dtype)
    rotary = make_rotary(3, dtype)
    q_ref, _, k_ref, _ = expected(inputs, rotary, None)
    sums = inputs["x"].float().pow(2).sum(-1)
    q = fused_rms_norm_linear(inputs["x"], inputs["weight"], row_sumsq=sums, epilogue=ROT, rotary=rotary)
    torch.testing.assert_close(q, q_ref, rtol=REL_TOL[dtype], atol=REL_TOL[dtype])
    torch.testing.assert_close(rotary.k_cache, k_ref, rtol=REL_TOL[dtype], atol=REL_TOL[dtype])


def test_the_rotary_form_keeps_programs_inside_a_head():
    assert rotary_epilogue(128, 1).launched(Config(16, 64, 128)) == Config(16, 32, 128)
    assert rotary_epilogue(64, 1).launched(Config(16, 256, 64)) == Config(16, 32, 64)  # 128 does not divide 32
    assert rotary_epilogue(128, 1).launched(Config(16, 32, 128)) is None  # 16 columns: slower than the separate kernel
    assert rotary_epilogue(32, 1).launched(Config(16, 64, 128)) is None  # head_dim/2 = 16: no BLOCK_N >= 32 divides it
    assert rotary_epilogue(128, 1).launched(Config(16, 64, 128, SPLIT_K=2)) is None
    assert rotary_epilogue(128, 1).launched(Config(16, 64, 64, TMA=1)) is None


def test_what_it_refuses():
    inputs = make_inputs(4, K, (HQ + 2 * HKV) * D, torch.float32)
    rotary = make_rotary(4, torch.float32)
    with pytest.raises(ValueError, match="config: with rotary a program's columns lie in one head: BLOCK_N=64"):
        fused_rms_norm_linear(**inputs, epilogue=ROT, rotary=rotary, config=Config(16, 64, 64))
    with pytest.raises(ValueError, match="config: rotary is applied in the GEMM's epilogue, which needs SPLIT_K=1"):
        fused_rms_norm_linear(**inputs, epilogue=ROT, rotary=rotary, config=Config(16, 16, 32, SPLIT_K=2))
    with pytest.raises(ValueError, match=r"weight: expected the stacked \[q; k; v\] rows, .* = 512, got 240"):
        fused_rms_norm_linear(inputs["x"], inputs["weight"][:240], epilogue=ROT, rotary=rotary)
    with pytest.raises(ValueError, match="rotary: expected the KV-cache buffers exactly with a rotary epilogue"):
        fused_rms_norm_linear(**inputs, rotary=rotary, epilogue=GATED)
    with pytest.raises(ValueError, match="rotary: its buffers serve rotary=64/2, the epilogue is rotary=64/4"):
        fused_rms_norm_linear(**inputs, rotary=rotary, epilogue=rotary_epilogue(64, 4))
    with pytest.raises(ValueError, match=r"rotary.slot_mapping: expected a contiguous int32/int64 tensor of shape "
                                         r"\(4,\)"):
        fused_rms_norm_linear(**inputs, epilogue=ROT,
                              rotary=dataclasses.replace(rotary, slot_mapping=rotary.slot_mapping[:3]))
    strided = torch.stack([rotary.positions, rotary.positions], dim=1)[:, 0]
    with pytest.raises(ValueError, match="rotary.positions: expected a contiguous int32/int64"):
        fused_rms_norm_linear(**inputs, epilogue=ROT,
                              rotary=dataclasses.replace(rotary, positions=strided))
    with pytest.raises(ValueError, match="rotary.cos_sin_cache: expected a float32 \\[max_position, head_dim\\]"):
        fused_rms_norm_linear(**inputs, epilogue=ROT,
                              rotary=dataclasses.replace(rotary, cos_sin_cache=rotary.cos_sin_cache.t()))
    with pytest.raises(TypeError, match="rotary.positions: expected a torch.Tensor, got list"):
        fused_rms_norm_linear(**inputs, epilogue=ROT,
                              rotary=dataclasses.replace(rotary, positions=[0, 1, 2, 3]))
    with pytest.raises(ValueError, match="rotary.num_q_heads: 3 is not a multiple of the cache's 2 KV heads"):
        fused_rms_norm_linear(**inputs, epilogue=ROT,
                              rotary=dataclasses.replace(rotary, num_q_heads=3))
    small = dataclasses.replace(rotary, cos_sin_cache=rotary.cos_sin_cache[:, :16])
    with pytest.raises(ValueError, match="head_dim/2 must be a multiple of 16, got head_dim=16"):
        fused_rms_norm_linear(**inputs, epilogue=ROT, rotary=small)
