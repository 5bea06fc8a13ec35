"""The fused RMSNorm+Linear with SiLU-and-mul in its epilogue (epilogue=GATED, the MLP's gate/up site) against
the float64 reference and against the same kernel without it followed by the activation; the config mapping."""
import pytest
import torch
import torch.nn.functional as F

from kernels import prepare
from kernels.config import Config
from kernels.epilogue import GATED
from kernels.rms_norm_linear import fused_rms_norm_linear, reference_rms_norm_linear
from kernels.reference import silu_and_mul_reference
from tests.kernels.test_fusion_kernel import DTYPES, REL_TOL, _poison_buffers, make_inputs, rel_err  # noqa: F401

STACKED = [  # configs as tuned for the stacked [gate; up] product
    Config(16, 32, 64, num_warps=2, num_stages=2, GROUP_M=1),
    Config(16, 64, 128, num_warps=4, num_stages=3, GROUP_M=4),
    Config(32, 64, 32, num_warps=4, num_stages=2, GROUP_M=2, SUMSQ_IN_LOOP=1),
    # GEMV-like row tiles, the eviction hint
    Config(1, 32, 64, num_warps=1, num_stages=1, GROUP_M=1, EVICT=1),
    Config(4, 64, 128, num_warps=2, num_stages=6, GROUP_M=1, SUMSQ_IN_LOOP=1),
]


def silu_mul64(y: torch.Tensor) -> torch.Tensor:
    gate, up = y.double().chunk(2, dim=-1)
    return F.silu(gate) * up


@pytest.mark.parametrize("stacked", STACKED, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias,residual", [(False, False), (True, True)])
def test_the_epilogue_gives_silu_of_gate_times_up(stacked, dtype, bias, residual):
    for M, K, N in [(1, 192, 2 * 48), (19, 256, 2 * 80)]:
        inputs = make_inputs(M, K, N, dtype, bias=bias, residual=residual, norm_weight=True)
        got = fused_rms_norm_linear(**inputs, epilogue=GATED, config=GATED.launched(stacked))
        plain = fused_rms_norm_linear(**inputs, config=stacked)
        ref = reference_rms_norm_linear(**inputs)
        if residual:
            (got, h), (plain, _), (ref, _) = got, plain, ref
            torch.testing.assert_close(h, inputs["x"] + inputs["residual"], rtol=0, atol=0)
        assert got.shape == (M, N // 2) and got.dtype == dtype
        assert rel_err(got, silu_mul64(ref)) < 2 * REL_TOL[dtype]
        # What the separate SiLU-and-mul kernel makes of the stacked output, up to the product's last bit.
        torch.testing.assert_close(got, silu_and_mul_reference(plain), rtol=REL_TOL[dtype], atol=REL_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_config_and_precomputed_statistics(dtype):
    inputs = make_inputs(5, 128, 2 * 40, dtype, bias=True)
    got = fused_rms_norm_linear(**inputs, epilogue=GATED)
    assert rel_err(got, silu_mul64(reference_rms_norm_linear(**inputs))) < 2 * REL_TOL[dtype]
    x = inputs["x"]
    sums = x.float().pow(2).sum(-1)
    again = fused_rms_norm_linear(x, inputs["weight"], inputs["bias"], row_sumsq=sums, epilogue=GATED)
    torch.testing.assert_close(again, got, rtol=REL_TOL[dtype], atol=REL_TOL[dtype])


def test_the_gated_form_keeps_the_weight_rows_a_program_streams():
    assert GATED.launched(Config(16, 64, 128, GROUP_M=1)) == Config(16, 32, 128, GROUP_M=1)
    assert GATED.launched(Config(16, 16, 128)) is None  # would halve below tl.dot's 16
    assert GATED.launched(Config(16, 64, 128, SPLIT_K=2)) is None
    assert GATED.launched(Config(16, 64, 64, TMA=1)) is None


def test_what_it_refuses(monkeypatch):
    inputs = make_inputs(4, 64, 2 * 32, torch.float32)
    with pytest.raises(ValueError, match="weight: a gated epilogue needs .* an even number of rows; got N=63"):
        fused_rms_norm_linear(inputs["x"], inputs["weight"][:63], epilogue=GATED)
    with pytest.raises(ValueError, match="config: silu_and_mul .* needs SPLIT_K=1 and TMA=0; got SPLIT_K=2, TMA=0"):
        fused_rms_norm_linear(**inputs, epilogue=GATED, config=Config(16, 32, 32, SPLIT_K=2))
    # fp32 on a 64 KiB card: the plain tiles fit (40 KiB), the gate and up tiles do not (72 KiB).
    monkeypatch.setattr(prepare, "device_smem_limit", lambda device: 65536)
    fused_rms_norm_linear(**inputs, config=Config(16, 64, 128, num_stages=1))
    with pytest.raises(ValueError, match="config: with silu_and_mul each stage holds two weight tiles: needs "
                                         "~73728 bytes of shared memory, the device allows 65536"):
        fused_rms_norm_linear(**inputs, epilogue=GATED, config=Config(16, 64, 128, num_stages=1))
