"""The norm-free tuned GEMM (kernels/linear.py, kernel "linear") against a float64 reference, its search space,
and a short tune and export through the tuner with FakeTimer (a test double) as the clock."""
import pytest
import torch

from autotune.objective import Evaluator
from autotune.export import build_table
from tuning_table import parse_table
from tests.doubles import FakeTimer
from db.queries import best_results
from kernels import prepare
from kernels.config import Config, device_has_tma
from kernels.linear import linear
from search_spaces import Problem, get_space
from search_spaces.shapes import parse_shapes
from tests.conftest import DEVICE
from tests.autotune.test_tuner import db, make_tuner  # noqa: F401 - db is a fixture
from tests.kernels.test_fusion_kernel import DTYPES, REL_TOL, _poison_buffers, rel_err  # noqa: F401 - autouse fixture
from tests.kernels.test_tma_gemm import TMA_CONFIGS

SPACE = get_space("linear")
H100_SMEM = 232448


def make(M, K, N, dtype, bias=True, lead=()):
    g = torch.Generator(device="cpu").manual_seed(M * 1000 + K + N)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)
    return dict(x=rnd(*lead, M, K), weight=rnd(N, K, scale=K ** -0.5), bias=rnd(N) if bias else None)


def check(inputs, dtype, config=None):
    out = linear(**inputs, config=config)
    ref = inputs["x"].double().cpu() @ inputs["weight"].double().cpu().T
    if inputs["bias"] is not None:
        ref = ref + inputs["bias"].double().cpu()
    assert out.shape == ref.shape and out.dtype == dtype
    err = rel_err(out, ref)
    assert err < REL_TOL[dtype], f"relative error {err:.2e} for {dtype}, {config}"


CONFIGS = [
    None,  # default_config
    Config(16, 16, 16, num_warps=1, num_stages=1, GROUP_M=1),
    Config(32, 64, 32, num_warps=4, num_stages=3, GROUP_M=2),
    Config(16, 32, 32, SPLIT_K=2),
    Config(16, 64, 64, SPLIT_K=3),  # 1000 / 64 -> 16 K blocks, uneven split
    Config(16, 16, 256, SPLIT_K=4),  # 4 K blocks, the last one partial
    # GEMV-like row tiles (BLOCK_M < 16) with the eviction hint and split-K
    Config(1, 16, 64, num_warps=1, num_stages=1, GROUP_M=1, EVICT=1),
    Config(4, 32, 128, num_warps=2, num_stages=6, GROUP_M=2, SPLIT_K=3),
]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_pointer_kernel_and_split_k(config, dtype, bias):
    # Several row blocks, the last one partial: a GEMV-like tile gets there at fewer rows (the interpreter runs each
    # row block's program on its own).
    rows = 13 if config is not None and config.BLOCK_M < 16 else 37
    for M, K, N in [(1, 1000, 32), (rows, 1000, 33)]:
        check(make(M, K, N, dtype, bias), dtype, config)


@pytest.mark.skipif(not device_has_tma(DEVICE), reason="TMA needs an sm_90+ GPU")
@pytest.mark.parametrize("config", TMA_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tma_main_loop(config, dtype):
    for M, K, N in [(1, 64, 32), (37, 200, 96)]:
        check(make(M, K, N, dtype), dtype, config)
    check(make(5, 128, 64, dtype, bias=False), dtype, config)


@pytest.mark.parametrize("M", [1, 16, 33, 300])
def test_default_config_for_any_m(M):
    check(make(M, 96, 40, torch.float32), torch.float32)


def test_batched_strided_empty_and_int64_paths(monkeypatch):
    dtype = torch.float16
    base = make(14, 320, 24, dtype, lead=(3,))
    x = base["x"][:, ::2, ::2]  # strided rows and K
    check(dict(base, x=x, weight=base["weight"][:, ::2]), dtype)
    assert linear(x[:, :0], base["weight"][:, ::2]).shape == (3, 0, 24)
    monkeypatch.setattr(prepare, "_INT32_LIMIT", 0)
    check(make(19, 200, 40, torch.float32), torch.float32, Config(16, 32, 64, SPLIT_K=2))


def test_the_norm_free_kernel_refuses_a_sum_of_squares_and_bad_inputs():
    inputs = make(4, 64, 32, torch.float32)
    with pytest.raises(ValueError, match="Config.SUMSQ_IN_LOOP=1: the plain linear kernel has no norm"):
        linear(**inputs, config=Config(16, 32, 32, SUMSQ_IN_LOOP=1))
    with pytest.raises(ValueError, match=r"weight: expected shape \(N, K=64\)"):
        linear(inputs["x"], inputs["weight"][:, :32])
    with pytest.raises(TypeError, match="config: expected a kernels.Config"):
        linear(**inputs, config={"BLOCK_M": 16})


def test_space_is_the_fused_one_without_a_sum_of_squares():
    p = Problem(8, 4096, 11008)
    axes, fused = SPACE.axes(p), get_space("rms_norm_linear").axes(p)
    assert axes["SUMSQ_IN_LOOP"] == [0] and {k: v for k, v in axes.items() if k != "SUMSQ_IN_LOOP"} == {
        k: v for k, v in fused.items() if k != "SUMSQ_IN_LOOP"}
    feasible = SPACE.feasible(p, H100_SMEM)
    assert feasible and all(c.SUMSQ_IN_LOOP == 0 for c in feasible)
    for c in feasible:
        c.validate(K=p.K, elem_bytes=2, smem_limit=H100_SMEM, norm=False)
    assert "SUMSQ_IN_LOOP=1" in SPACE.violation(Config(SUMSQ_IN_LOOP=1), p, None)
    picks = SPACE.heuristics(p, torch.device("cpu"))
    assert picks and all(c.SUMSQ_IN_LOOP == 0 for c in picks) and len(set(picks)) == len(picks)
    assert SPACE.footprint_bytes(p) == (8 * 4096 + 11008 * 4096 + 8 * 11008) * 2


def test_inputs_are_random_and_the_baseline_is_f_linear():
    tiny = Problem(20, 64, 80, "float32")
    inputs = SPACE.make_inputs(tiny, DEVICE, copies=2)
    assert [len(i) for i in inputs] == [2, 2] and not torch.equal(inputs[0][0], inputs[1][0])
    assert bool((inputs[0][0] != 0).all()) and bool((inputs[0][1] != 0).all())
    torch.testing.assert_close(SPACE.launcher(None)(inputs[0]), inputs[0][0] @ inputs[0][1].T)
    ev = Evaluator(SPACE, tiny, DEVICE, FakeTimer(), l2_bytes=1 << 16)
    ev.time_baseline(3)
    for config in (Config(16, 32, 32, 2, 2, 1, 1), Config(16, 64, 32, 4, 3, 1, 2)):
        result = ev.evaluate(config, repeats=3)
        assert result.correct and result.speedup > 0


def test_presets_give_o_proj_and_down_proj():
    sites = {s.name: (s.N, s.K) for s in parse_shapes("llama-7b", "linear")}
    assert sites == {"o_proj": (4096, 4096), "down_proj": (4096, 11008)}
    assert {s.name: s.K for s in parse_shapes("qwen3-0.6b", "linear")}["o_proj"] == 16 * 128
    with pytest.raises(ValueError, match="no model sites known"):
        parse_shapes("llama-7b", "tiny_matmul")


def test_tune_both_kernels_and_export_both(db):  # noqa: F811 - the fixture
    tiny = Problem(4, 64, 96, "float16")
    plain = make_tuner(db, space=SPACE, trials=6).tune(tiny)
    assert plain.study_name.startswith("linear|") and plain.best.config.SUMSQ_IN_LOOP == 0
    make_tuner(db, trials=4).tune(tiny)
    data = build_table(best_results(db[1]))
    assert sorted(data["kernels"]) == ["linear", "rms_norm_linear"]
    table = parse_table(data)
    assert table.bucket("linear", 64, 96, torch.float16, 3).config == plain.best.config
    assert table.bucket("rms_norm_linear", 64, 96, torch.float16, 3) is not None
    data["kernels"]["linear"][0]["buckets"][0]["config"]["SUMSQ_IN_LOOP"] = 1
    with pytest.raises(ValueError, match="kernels.linear.*SUMSQ_IN_LOOP=1"):
        parse_table(data)
