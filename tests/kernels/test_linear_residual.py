"""The plain linear with the residual epilogue (kernels/linear.py `linear_residual`) and the fused RMSNorm+Linear
that starts from its row statistics (`row_sumsq`): the chain o_proj -> post-attention norm + gate/up of a decoder
layer, checked against the separate kernels and the float64 reference, with every buffer poisoned."""
import pytest
import torch

from kernels import prepare
from kernels.config import Config, device_has_tma
from kernels.linear import linear, linear_residual
from kernels.rms_norm_linear import fused_rms_norm_linear, reference_rms_norm_linear
from tests.conftest import DEVICE
from tests.kernels.test_fusion_kernel import DTYPES, REL_TOL, _poison_buffers, rel_err  # noqa: F401 - autouse fixture
from tests.kernels.test_linear_kernel import CONFIGS, make
from tests.kernels.test_tma_gemm import TMA_CONFIGS

CHAIN_CONFIGS = CONFIGS + (TMA_CONFIGS[:2] if device_has_tma(DEVICE) else [])


def residual_like(inputs, seed=7):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x, w = inputs["x"], inputs["weight"]
    return torch.randn(*x.shape[:-1], w.shape[0], generator=g).to(x.dtype).to(DEVICE)


@pytest.mark.parametrize("config", CHAIN_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_h_is_the_separate_linear_plus_residual_and_the_sums_are_its_squares(config, dtype):
    # 37 rows span several row blocks of every tile; the GEMV-like tiles (BLOCK_M < 16) get there with 13, at a
    # third of the interpreter's time.
    rows = 13 if config is not None and config.BLOCK_M < 16 else 37
    for M, K, N, bias in [(1, 1000, 64, True), (rows, 1000, 96, False), (5, 1024, 48, True)]:
        inputs = make(M, K, N, dtype, bias)
        residual = residual_like(inputs)
        h, ss = linear_residual(**inputs, residual=residual, config=config)
        # The same GEMM, then `y + residual` rounded once: bit for bit what the unfused path stores.
        torch.testing.assert_close(h, linear(**inputs, config=config) + residual, rtol=0, atol=0)
        # Partial sums over 1024-column chunks (RESIDUAL_CHUNK), N <= 1024 here: one.
        assert ss.shape == (1, M) and ss.dtype == torch.float32
        torch.testing.assert_close(ss.sum(0), h.float().pow(2).sum(-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("second", [None, Config(16, 32, 64, SPLIT_K=2), Config(16, 16, 32, SUMSQ_IN_LOOP=1)],
                         ids=str)
def test_the_fused_site_after_it_skips_its_statistics(dtype, second):
    """A config with the sum of squares in its K loop also takes the given sums (the loop then sums nothing)."""
    o_proj = make(6, 192, 128, dtype, bias=False, lead=(2,))
    residual = residual_like(o_proj)
    h, ss = linear_residual(**o_proj, residual=residual, config=Config(16, 32, 64, SPLIT_K=3))
    assert h.shape == (2, 6, 128) and ss.shape == (1, 2, 6)
    gate_up = make(6, 128, 80, dtype, bias=True, lead=(2,))
    out = fused_rms_norm_linear(h, gate_up["weight"], gate_up["bias"], 1e-5, row_sumsq=ss, config=second)
    ref = reference_rms_norm_linear(h, gate_up["weight"], gate_up["bias"], 1e-5)
    assert rel_err(out, ref) < REL_TOL[dtype]
    # Sums handed over as a strided view are read as the values they hold; whole sums as well as partial ones.
    strided = torch.stack([ss[0], ss[0]], dim=-1)[..., 0]
    again = fused_rms_norm_linear(h, gate_up["weight"], gate_up["bias"], 1e-5, row_sumsq=strided, config=second)
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    # What the site computes from x + residual itself.
    own, _ = fused_rms_norm_linear(linear(**o_proj, config=Config(16, 32, 64, SPLIT_K=3)), gate_up["weight"],
                                   gate_up["bias"], 1e-5, residual=residual, config=second)
    torch.testing.assert_close(out, own, rtol=REL_TOL[dtype], atol=REL_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_wide_rows_leave_as_partial_sums_that_the_next_site_adds(dtype, monkeypatch):
    """N = 2560: three chunks of 1024 columns, the last one half empty; the pointer and TMA main loops and a split-K
    site after it add them up."""
    o_proj = make(5, 256, 2560, dtype, bias=True)
    residual = residual_like(o_proj)
    h, ss = linear_residual(**o_proj, residual=residual, config=Config(16, 64, 64, SPLIT_K=2))
    assert ss.shape == (3, 5)
    torch.testing.assert_close(ss.sum(0), h.float().pow(2).sum(-1), rtol=1e-5, atol=1e-3)
    nxt = make(5, 2560, 48, dtype, bias=False)
    ref = reference_rms_norm_linear(h, nxt["weight"], None, 1e-5)
    configs = [Config(16, 16, 64), Config(16, 16, 128, SPLIT_K=2)] + TMA_CONFIGS[:1] * device_has_tma(DEVICE)
    for config in configs:
        out = fused_rms_norm_linear(h, nxt["weight"], eps=1e-5, row_sumsq=ss, config=config)
        assert rel_err(out, ref) < REL_TOL[dtype], config


def test_empty_batch_and_int64_indexing(monkeypatch):
    inputs = make(0, 64, 32, torch.float32)
    h, ss = linear_residual(**inputs, residual=torch.empty(0, 32, device=DEVICE))
    assert h.shape == (0, 32) and ss.shape == (1, 0)
    monkeypatch.setattr(prepare, "_INT32_LIMIT", 0)
    inputs = make(19, 200, 40, torch.float32)
    residual = residual_like(inputs)
    h, ss = linear_residual(**inputs, residual=residual, config=Config(16, 32, 64, SPLIT_K=2))
    torch.testing.assert_close(h, linear(**inputs, config=Config(16, 32, 64, SPLIT_K=2)) + residual, rtol=0, atol=0)


def test_bad_inputs_name_the_argument():
    inputs = make(4, 64, 32, torch.float32)
    with pytest.raises(ValueError, match=r"residual: expected shape \(4, 32\), got \(4, 64\)"):
        linear_residual(**inputs, residual=torch.randn(4, 64, device=DEVICE))
    with pytest.raises(TypeError, match="residual: expected dtype torch.float32, got torch.float16"):
        linear_residual(**inputs, residual=torch.randn(4, 32, device=DEVICE).half())
    x, w = inputs["x"], torch.randn(16, 64, device=DEVICE)
    with pytest.raises(ValueError, match="row_sumsq: x already holds the residual"):
        fused_rms_norm_linear(x, w, residual=x, row_sumsq=torch.ones(4, device=DEVICE))
    with pytest.raises(ValueError, match=r"row_sumsq: expected shape \(4,\), got \(5,\)"):
        fused_rms_norm_linear(x, w, row_sumsq=torch.ones(5, device=DEVICE))
    with pytest.raises(ValueError, match=r"row_sumsq: expected shape \(2, 4\), got \(2, 3\)"):
        fused_rms_norm_linear(x, w, row_sumsq=torch.ones(2, 3, device=DEVICE))
    with pytest.raises(TypeError, match="row_sumsq: expected dtype torch.float32, got torch.float64"):
        fused_rms_norm_linear(x, w, row_sumsq=torch.ones(4, device=DEVICE, dtype=torch.float64))
