"""The TMA main loop (Config.TMA = 1, 2) against the float64 reference, and what it refuses.

In Triton's interpreter on CPU (fp16/fp32) and compiled on an sm_90+ GPU (also bf16).
"""
import pytest
import torch

import kernels.gemm as gemm
from kernels import prepare
from kernels.config import Config, device_has_tma
from kernels.rms_norm_linear import fused_rms_norm_linear, reference_rms_norm_linear
from tests.conftest import DEVICE
from tests.kernels.test_fusion_kernel import DTYPES, _poison_buffers, check, make_inputs, rel_err  # noqa: F401

pytestmark = pytest.mark.skipif(not device_has_tma(DEVICE), reason="TMA needs an sm_90+ GPU")

TMA_CONFIGS = [
    Config(16, 32, 64, num_warps=2, num_stages=2, GROUP_M=1, TMA=1),
    Config(16, 32, 64, num_warps=2, num_stages=2, GROUP_M=2, TMA=2),
    Config(32, 64, 32, num_warps=4, num_stages=3, GROUP_M=4, TMA=2),
    Config(16, 256, 32, num_warps=4, num_stages=2, GROUP_M=1, TMA=2),  # output stored in two half tiles
]


@pytest.mark.parametrize("config", TMA_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 64, 32), (37, 200, 96), (130, 256, 264)])
def test_tma_main_loop(M, K, N, dtype, config):
    """Ragged M, N and K edges, with and without the residual, bias on."""
    check(make_inputs(M, K, N, dtype, bias=True, residual=True), dtype, config)
    check(make_inputs(M, K, N, dtype, bias=True), dtype, config)


@pytest.mark.parametrize("dtype", DTYPES)
def test_persistent_programs_walk_several_tiles(monkeypatch, dtype):
    """With fewer programs than tiles each program loops; the epilogue must store the tile it computed."""
    monkeypatch.setattr(gemm, "sm_count", lambda device: 3)
    check(make_inputs(70, 128, 200, dtype, bias=True, residual=True), dtype,
          Config(16, 32, 64, num_warps=2, num_stages=2, GROUP_M=2, TMA=2))


@pytest.mark.parametrize("config,inputs,match", [
    (Config(TMA=3), {}, "TMA=3: expected 0"),
    (Config(16, 32, 32, SPLIT_K=2, TMA=1), {}, "needs SPLIT_K=1 and SUMSQ_IN_LOOP=0"),
    (Config(16, 32, 32, SUMSQ_IN_LOOP=1, TMA=2), {}, "needs SPLIT_K=1 and SUMSQ_IN_LOOP=0"),
    (Config(16, 512, 32, TMA=2), {}, "a TMA tile is at most 256"),
    (Config(16, 32, 32, TMA=2), {"norm_weight": True}, "folded into the weight"),
    (Config(16, 32, 32, TMA=2), {"N": 33}, "multiples of 16 bytes"),
    (Config(16, 32, 32, TMA=2), {"strided": True}, "unit-stride, 16-byte aligned rows"),
])
def test_what_the_tma_loop_refuses(config, inputs, match):
    dtype = torch.float16
    data = make_inputs(4, 64, inputs.get("N", 32), dtype, norm_weight=inputs.get("norm_weight", False))
    if inputs.get("strided"):
        data["x"] = make_inputs(4, 128, 32, dtype)["x"][:, ::2]
    with pytest.raises(ValueError, match=match):
        fused_rms_norm_linear(**data, config=config)


def test_a_default_tma_config_falls_back_to_pointer_loads(monkeypatch):
    """The default may pick TMA from the shape alone; inputs TMA cannot address still run, through pointers."""
    monkeypatch.setattr(prepare, "default_config", lambda *a, tma=True: Config(16, 32, 64, num_stages=2, TMA=2 * tma))
    dtype = torch.float32
    inputs = make_inputs(5, 128, 32, dtype, bias=True, norm_weight=True)
    inputs["x"] = make_inputs(5, 256, 32, dtype)["x"][:, ::2]
    assert rel_err(fused_rms_norm_linear(**inputs), reference_rms_norm_linear(**inputs)) < 1e-5


def test_shared_memory_estimate_covers_what_triton_compiled_for_sm_90():
    """Sizes of kernels compiled offline for sm_90 with triton 3.6 (triton.compile with a GPUTarget)."""
    compiled = {Config(128, 256, 64, num_warps=4, num_stages=4, TMA=2): 229920,
                Config(128, 256, 64, num_warps=8, num_stages=4, TMA=2): 229920,
                Config(64, 256, 64, num_warps=8, num_stages=5, TMA=2): 253992,  # warps split along N
                Config(64, 256, 64, num_warps=8, num_stages=2, TMA=2): 131088,
                Config(128, 128, 64, num_warps=4, num_stages=4, TMA=2): 164384}
    for config, size in compiled.items():
        assert size <= config.smem_bytes(2) <= size + 2048, config
    with pytest.raises(ValueError, match="shared memory"):
        Config(64, 256, 64, num_warps=8, num_stages=5, TMA=2).validate(K=4096, elem_bytes=2, smem_limit=232448)
