"""The fused RMSNorm+Linear kernel against the float64 reference: Triton's interpreter on CPU, compiled on CUDA."""
import dataclasses
import itertools

import pytest
import torch

import kernels.config
from kernels import prepare
from kernels.rms_norm_linear import (
    Config,
    baseline_rms_norm_linear,
    fold_norm_weight,
    fused_rms_norm_linear,
    reference_rms_norm_linear,
)
from tests.conftest import DEVICE

# bf16 tl.dot is wrong in Triton 3.6's interpreter, so bf16 is checked on the GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
# ||out - ref|| / ||ref||: fp32 runs an IEEE dot; fp16/bf16 are bounded by a few output roundings.
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.float16: 2e-3, torch.bfloat16: 1.2e-2}


@pytest.fixture(autouse=True)
def _poison_buffers(monkeypatch):
    """Every buffer the wrappers allocate starts as NaN, so an unwritten element cannot pass."""
    monkeypatch.setattr(prepare, "new_buffer",
                        lambda shape, like, dtype: torch.full(shape, float("nan"), device=like.device, dtype=dtype))


def make_inputs(M, K, N, dtype, *, bias=False, residual=False, norm_weight=False, lead=()):
    g = torch.Generator(device="cpu").manual_seed(torch.seed() % 2**31)

    def rnd(*shape, scale=1.0, offset=0.0):
        return (torch.randn(*shape, generator=g) * scale + offset).to(dtype).to(DEVICE)
    shape = (*lead, M, K) if lead else (M, K)
    return dict(
        x=rnd(*shape),
        weight=rnd(N, K, scale=K ** -0.5),
        bias=rnd(N) if bias else None,
        norm_weight=rnd(K, scale=0.2, offset=1.0) if norm_weight else None,
        residual=rnd(*shape) if residual else None,
    )


def rel_err(out, ref):
    assert not torch.isnan(out).any(), "output has unwritten (NaN) elements"
    return ((out.double().cpu() - ref).norm() / ref.norm()).item()


def check(inputs, dtype, config=None):
    got = fused_rms_norm_linear(**inputs, config=config)
    ref = reference_rms_norm_linear(**inputs)
    if inputs["residual"] is not None:
        (out, h), (ref_out, _) = got, ref
        # h = x + residual rounded once to the input dtype: exactly what the unfused add gives.
        torch.testing.assert_close(h, inputs["x"] + inputs["residual"], rtol=0, atol=0)
    else:
        out, ref_out = got, ref
    assert out.shape == ref_out.shape and out.dtype == dtype
    err = rel_err(out, ref_out)
    assert err < REL_TOL[dtype], f"relative error {err:.2e} >= {REL_TOL[dtype]:.0e} for {dtype}, {config}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 64, 32), (3, 1000, 33), (17, 256, 96), (257, 1000, 33)])
def test_numerical_correctness(M, K, N, dtype):
    check(make_inputs(M, K, N, dtype, bias=True, residual=True, norm_weight=True), dtype)


@pytest.mark.parametrize("in_loop", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias,residual,norm_weight", list(itertools.product([False, True], repeat=3)))
def test_optional_operands(bias, residual, norm_weight, dtype, in_loop):
    inputs = make_inputs(5, 192, 48, dtype, bias=bias, residual=residual, norm_weight=norm_weight)
    check(inputs, dtype, Config(16, 32, 64, SPLIT_K=2, SUMSQ_IN_LOOP=in_loop))
    check(inputs, dtype, Config(16, 16, 32, SUMSQ_IN_LOOP=in_loop))


CONFIGS = [
    Config(16, 16, 16, num_warps=1, num_stages=1, GROUP_M=1),
    Config(16, 32, 64, num_warps=2, num_stages=2, GROUP_M=4),
    Config(32, 64, 32, num_warps=4, num_stages=3, GROUP_M=2),
    Config(64, 16, 128, num_warps=4, num_stages=2, GROUP_M=8),
    Config(16, 32, 32, SPLIT_K=2),
    Config(16, 64, 64, SPLIT_K=3),  # 1000 / 64 -> 16 K blocks, uneven split
    Config(32, 16, 128, SPLIT_K=8),  # 8 K blocks: one per split
    Config(16, 16, 256, SPLIT_K=4),  # 4 K blocks, the last one partial
]
# Each config once with the sum of squares in the K loop and once from the row-statistics prologue.
CONFIGS = [c for cfg in CONFIGS for c in (cfg, Config(**{**cfg.to_dict(), "SUMSQ_IN_LOOP": 1}))]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_configs(config, dtype):
    check(make_inputs(37, 1000, 33, dtype, bias=True, residual=True, norm_weight=True), dtype, config)


# GEMV-like row tiles (BLOCK_M < 16: no tl.dot) and the eviction hint, each with the sum of squares from both sources;
# split-K, an uneven K and several row blocks of a 5-row batch included.
GEMV_CONFIGS = [
    Config(1, 16, 64, num_warps=1, num_stages=2, GROUP_M=1),
    Config(1, 32, 32, num_warps=1, num_stages=1, GROUP_M=1, SPLIT_K=3, EVICT=1),
    Config(2, 16, 128, num_warps=2, num_stages=6, GROUP_M=2, SPLIT_K=2),
    Config(4, 16, 128, num_warps=1, num_stages=1, GROUP_M=1, EVICT=1),
    Config(8, 64, 32, num_warps=4, num_stages=3, GROUP_M=1, SPLIT_K=4),
    Config(16, 16, 64, num_warps=1, num_stages=1, GROUP_M=1, EVICT=1),  # tl.dot with the hint
]
GEMV_CONFIGS = [c for cfg in GEMV_CONFIGS for c in (cfg, dataclasses.replace(cfg, SUMSQ_IN_LOOP=1))]


@pytest.mark.parametrize("config", GEMV_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_tiles_and_the_eviction_hint(config, dtype):
    check(make_inputs(5, 200, 40, dtype, bias=True, residual=True, norm_weight=True), dtype, config)
    check(make_inputs(1, 256, 48, dtype), dtype, config)


@pytest.mark.parametrize("M", [1, 16, 33, 64, 200, 300])
@pytest.mark.parametrize("dtype", DTYPES)
def test_default_config_is_valid_and_correct(M, dtype):
    for N in (4096, 12288):
        cfg = kernels.config.default_config(M, N, 4096, DEVICE, torch.tensor([], dtype=dtype).element_size())
        cfg.validate(K=4096, elem_bytes=2, smem_limit=kernels.config.device_smem_limit(DEVICE))
    check(make_inputs(M, 96, 40, dtype, residual=True), dtype)


def test_non_contiguous_and_batched_inputs():
    dtype = torch.float16
    base = make_inputs(2 * 7, 2 * 160, 24, dtype, norm_weight=True, bias=True, lead=(3,))
    x = base["x"][:, ::2, ::2]  # strided in both the row and the K dimension
    residual = torch.randn(3, 160, 7, dtype=dtype, device=DEVICE).transpose(1, 2)
    weight = torch.randn(160, 24, dtype=dtype, device=DEVICE).mul(0.1).T  # (N, K) view with stride (1, N)
    inputs = dict(x=x, weight=weight, bias=base["bias"], norm_weight=base["norm_weight"][::2], residual=residual)
    assert not x.is_contiguous() and not weight.is_contiguous() and not residual.is_contiguous()
    out, h = fused_rms_norm_linear(**inputs)
    ref, _ = reference_rms_norm_linear(**inputs)
    assert out.shape == (3, 7, 24) and h.shape == (3, 7, 160)
    assert rel_err(out, ref) < REL_TOL[dtype]


def test_folded_gain_matches_separate_gain():
    dtype = torch.float32
    inputs = make_inputs(9, 128, 40, dtype, norm_weight=True)
    folded = dict(inputs, weight=fold_norm_weight(inputs["weight"], inputs["norm_weight"]), norm_weight=None)
    torch.testing.assert_close(fused_rms_norm_linear(**folded), fused_rms_norm_linear(**inputs),
                               rtol=1e-5, atol=1e-5)


def test_baseline_agrees_with_reference():
    dtype = torch.float32
    inputs = make_inputs(6, 128, 40, dtype, bias=True, residual=True, norm_weight=True)
    out, h = baseline_rms_norm_linear(**inputs)
    ref, ref_h = reference_rms_norm_linear(**inputs)
    assert rel_err(out, ref) < 1e-5 and rel_err(h, ref_h) < 1e-6


def test_empty_batch():
    inputs = make_inputs(1, 64, 16, torch.float32, residual=True)
    inputs["x"], inputs["residual"] = inputs["x"][:0], inputs["residual"][:0]
    out, h = fused_rms_norm_linear(**inputs)
    assert out.shape == (0, 16) and h.shape == (0, 64)


def _bad(**overrides):
    inputs = make_inputs(4, 64, 32, torch.float32)
    inputs.update(overrides)
    return inputs


@pytest.mark.parametrize("case,error,match", [
    (lambda: _bad(x=[[1.0]]), TypeError, "x: expected a torch.Tensor"),
    (lambda: _bad(x=torch.ones(4, 64, dtype=torch.int32, device=DEVICE)), TypeError, "x: dtype"),
    (lambda: _bad(weight=torch.randn(32, 63, device=DEVICE)), ValueError, r"weight: expected shape \(N, K=64\)"),
    (lambda: _bad(weight=torch.randn(32, 64, dtype=torch.float16, device=DEVICE)), TypeError, "weight: dtype"),
    (lambda: _bad(weight=torch.randn(32, 64, device="meta")), ValueError, "weight: on meta"),
    (lambda: _bad(bias=torch.randn(31, device=DEVICE)), ValueError, r"bias: expected shape \(32,\)"),
    (lambda: _bad(bias=torch.ones(32, dtype=torch.int64, device=DEVICE)), TypeError, "bias: expected a floating"),
    (lambda: _bad(bias=torch.ones(32, dtype=torch.float16, device=DEVICE)), TypeError, "bias: dtype"),
    (lambda: _bad(norm_weight=torch.randn(32, device=DEVICE)), ValueError, r"norm_weight: expected shape \(64,\)"),
    (lambda: _bad(residual=torch.randn(4, 32, device=DEVICE)), ValueError, r"residual: expected shape \(4, 64\)"),
    (lambda: _bad(residual=torch.randn(4, 64, dtype=torch.float16, device=DEVICE)), TypeError, "residual: expected dtype"),
])
def test_bad_inputs(case, error, match):
    with pytest.raises(error, match=match):
        fused_rms_norm_linear(**case())


@pytest.mark.parametrize("config,match", [
    (Config(BLOCK_M=24), "BLOCK_M=24: expected a positive power of two"),
    (Config(BLOCK_K=8), r"BLOCK_K=8: expected a value in \[16, 512\]"),
    (Config(num_warps=3), "num_warps=3"),
    (Config(num_stages=0), "num_stages=0"),
    (Config(GROUP_M=0), "GROUP_M=0"),
    (Config(SPLIT_K=0), "SPLIT_K=0"),
    (Config(SUMSQ_IN_LOOP=2), "SUMSQ_IN_LOOP=2: expected 0 or 1"),
    (Config(BLOCK_M=0), "BLOCK_M=0: expected a positive power of two"),
    (Config(BLOCK_N=8), r"BLOCK_N=8: expected a value in \[16, 512\]"),
    (Config(EVICT=2), r"EVICT=2: expected 0 \(no hint\) or 1"),
    (Config(EVICT=1, TMA=1), "EVICT=1: TMA=1 loads take no eviction hint"),
    (Config(BLOCK_M=8, TMA=2), "BLOCK_M=8: the TMA main loop runs tl.dot"),
    (Config(BLOCK_K=32, SPLIT_K=3), "SPLIT_K=3: larger than the 2 K blocks"),
])
def test_impossible_configs_are_refused_before_launch(config, match):
    with pytest.raises(ValueError, match=match):
        fused_rms_norm_linear(**_bad(), config=config)


def test_config_shared_memory_check_and_round_trip():
    big = Config(256, 256, 256, num_stages=4)
    with pytest.raises(ValueError, match="shared memory"):
        big.validate(K=4096, elem_bytes=2, smem_limit=232448)
    Config(64, 128, 64, num_stages=3).validate(K=4096, elem_bytes=2, smem_limit=232448)
    assert Config.from_dict(big.to_dict()) == big
    with pytest.raises(ValueError, match="unknown field"):
        Config.from_dict({"BLOCK_Q": 16})


def test_wrong_config_type_and_eps():
    with pytest.raises(TypeError, match="config: expected a kernels.Config"):
        fused_rms_norm_linear(**_bad(), config={"BLOCK_M": 16})
    with pytest.raises(ValueError, match="eps: expected a positive"):
        fused_rms_norm_linear(**_bad(), eps=0.0)


@pytest.mark.parametrize("config", [Config(16, 32, 64), Config(16, 32, 64, SPLIT_K=2, SUMSQ_IN_LOOP=1)], ids=str)
def test_int64_indexing_path(monkeypatch, config):
    """Past 2**31 elements the kernels index in int64; force that path on a small problem."""
    monkeypatch.setattr(prepare, "_INT32_LIMIT", 0)
    check(make_inputs(19, 200, 40, torch.float32, bias=True, residual=True, norm_weight=True), torch.float32,
          config)


@pytest.mark.parametrize("M", [1, 64, 300, 4096])
def test_default_config_fits_a_64_kib_card(monkeypatch, M):
    monkeypatch.setattr(kernels.config, "device_smem_limit", lambda device: 65536)
    for elem_bytes in (2, 4):
        cfg = kernels.config.default_config(M, 12288, 4096, DEVICE, elem_bytes)
        cfg.validate(K=4096, elem_bytes=elem_bytes, smem_limit=65536)


@pytest.mark.parametrize("make,match", [
    (lambda: Config(GROUP_M=1.5).validate(), r"GROUP_M=1.5: expected an int"),
    (lambda: Config(SPLIT_K=True).validate(), r"SPLIT_K=True: expected an int"),
    (lambda: Config.from_dict({"BLOCK_M": 16.9}), r"BLOCK_M=16.9: expected an int"),
    (lambda: Config.from_dict({"num_stages": "3"}), r"num_stages='3': expected an int"),
])
def test_config_fields_must_be_ints(make, match):
    with pytest.raises(ValueError, match=match):
        make()
