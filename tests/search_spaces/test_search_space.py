"""The declarative search space and the shape sets: pruning, constraints, presets, parsing."""
import dataclasses
import json

import pytest

from kernels.epilogue import GATED, PLAIN, Epilogue, rotary
from kernels.config import Config
from search_spaces import Problem, get_space
from search_spaces.shapes import DEFAULT_M_BUCKETS, parse_m_buckets, parse_shapes, sites_from_config

SPACE = get_space("rms_norm_linear")
H100_SMEM = 232448


@pytest.mark.parametrize("M", [1, 3, 16, 100, 4096])
def test_axes_are_pruned_by_m(M):
    axes = SPACE.axes(Problem(M, 4096, 12288))
    padded = 1 << (M - 1).bit_length()
    assert max(axes["BLOCK_M"]) == min(max(16, padded), 256)
    if M >= 1024:
        assert min(axes["BLOCK_M"]) >= 64 and axes["SPLIT_K"] == [1]
    elif M > 16:
        assert min(axes["BLOCK_M"]) == 16 and max(axes["SPLIT_K"]) > 1
    else:  # GEMV-like row tiles of the padded M and half of it, then tl.dot's 16 rows
        assert axes["BLOCK_M"] == [v for v in (1, 2, 4, 8) if v <= padded <= 2 * v] + [16]
    decode = M <= 16  # one warp, 16 columns, no or deep pipelining, the eviction hint: decode sizes only
    assert (1 in axes["num_warps"]) == (16 in axes["BLOCK_N"]) == (axes["EVICT"] == [0, 1]) == decode
    assert ({1, 6} <= set(axes["num_stages"])) == decode
    # GROUP_M only matters with several row blocks.
    assert (axes["GROUP_M"] == [1]) == (M <= min(axes["BLOCK_M"]))


def test_split_k_axis_is_bounded_by_k():
    axes = SPACE.axes(Problem(1, 128, 64))
    assert max(axes["SPLIT_K"]) == 128 // min(axes["BLOCK_K"])


def test_constraints_drop_impossible_configs_with_reasons():
    p = Problem(16, 4096, 12288)
    big = Config(BLOCK_M=16, BLOCK_N=256, BLOCK_K=256, num_warps=4, num_stages=5)
    assert "shared memory" in SPACE.violation(big, p, smem_limit=H100_SMEM)
    assert SPACE.violation(big, p, smem_limit=None) is None
    assert "SPLIT_K" in SPACE.violation(Config(BLOCK_K=128, SPLIT_K=4), Problem(1, 256, 64), None)
    assert "num_warps" in SPACE.violation(Config(BLOCK_M=16, BLOCK_N=32, num_warps=8), p, None)


def test_gemv_tiles_refuse_what_spills_or_drops_the_hint_before_compiling():
    p = Problem(1, 4096, 12288)
    helion = Config(4, 16, 128, num_warps=1, num_stages=6, GROUP_M=1)  # Helion's llama-7b QKV winner at M = 1
    assert SPACE.violation(helion, p, H100_SMEM) is None
    # The weight tile in registers: 64x128 on one warp is 256 elements a thread (spilled on sm_90).
    assert "256 weight elements per thread" in SPACE.violation(dataclasses.replace(helion, BLOCK_N=64), p, None)
    assert "4 weight elements per thread" in SPACE.violation(Config(1, 16, 64, num_warps=8), p, None)
    # The pipelined K loop's copies carry no eviction hint; unpipelined ones do, with or without tl.dot.
    assert "needs num_stages=1" in SPACE.violation(dataclasses.replace(helion, EVICT=1), p, None)
    for config in (dataclasses.replace(helion, num_stages=1, EVICT=1), Config(16, 64, 128, 4, 1, 1, EVICT=1)):
        assert SPACE.violation(config, p, H100_SMEM) is None
    # The TMA main loop has neither the GEMV tile nor the hint.
    assert "TMA main loop runs tl.dot" in SPACE.violation(dataclasses.replace(helion, TMA=1), p, None)
    assert "loads take no eviction hint" in SPACE.violation(Config(16, 64, 128, 4, 1, 1, TMA=1, EVICT=1), p, None)
    assert SPACE.violation(Config(16, 64, 128, num_warps=1, num_stages=6), p, H100_SMEM) is None


@pytest.mark.parametrize("epilogue", [PLAIN, GATED, rotary(128, 32)], ids=["plain", "gated", "rotary"])
@pytest.mark.parametrize("M", [1, 4, 16])
def test_decode_warm_starts_hold_gemv_tiles_that_run_the_sites_form(M, epilogue):
    import torch
    p = Problem(M, 4096, 12288, epilogue=epilogue)
    axes, feasible = SPACE.axes(p), set(SPACE.feasible(p, H100_SMEM))
    assert {c.BLOCK_M for c in feasible} == set(axes["BLOCK_M"]) and any(c.EVICT for c in feasible)
    gemv = [c for c in SPACE.heuristics(p, torch.device("cpu")) if c.BLOCK_M < 16]
    # One warp streams 16 columns (plain) or 16 column pairs (gated); a rotary program's 32 pairs need two.
    assert any(c.EVICT for c in gemv) and min(c.num_warps for c in gemv) == (2 if epilogue.kind == "rotary" else 1)
    for c in gemv:
        assert SPACE.violation(c, p, H100_SMEM) is None and c.BLOCK_M <= max(axes["BLOCK_M"][:-1])
        assert epilogue.launched(c) is not None  # the epilogue runs fused, not as a separate kernel
    assert any(SPACE.runs_as(c, p) in {SPACE.runs_as(f, p) for f in feasible} for c in gemv)
    # Past decode sizes the space and the warm starts are what they were: no GEMV tile, no hint.
    big = Problem(64, 4096, 12288, epilogue=epilogue)
    assert not any(c.BLOCK_M < 16 or c.EVICT for c in SPACE.heuristics(big, torch.device("cpu")))


def test_tma_configs_need_aligned_rows_a_tma_gpu_and_a_plain_k_loop(monkeypatch):
    import search_spaces.rms_norm_linear as space_module
    tma = Config(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, TMA=2)
    assert SPACE.violation(tma, Problem(16, 4096, 12288), H100_SMEM) is None
    assert "multiples of 16 bytes" in SPACE.violation(tma, Problem(16, 4096, 12289), H100_SMEM)
    assert "SPLIT_K=1" in SPACE.violation(Config(BLOCK_K=128, SPLIT_K=2, TMA=1), Problem(16, 4096, 64), None)
    monkeypatch.setattr(space_module, "_tuning_device_has_tma", lambda: False)
    assert "no TMA" in SPACE.violation(tma, Problem(16, 4096, 12288), H100_SMEM)
    feasible = SPACE.feasible(Problem(4096, 4096, 12288), H100_SMEM)
    assert feasible and not any(c.TMA for c in feasible)


def test_feasible_configs_all_validate():
    p = Problem(8, 4096, 12288)
    feasible = SPACE.feasible(p, H100_SMEM)
    axes = SPACE.axes(p)
    assert 0 < len(feasible) < len(list(_product(axes)))
    for c in feasible:
        c.validate(K=p.K, elem_bytes=2, smem_limit=H100_SMEM)


def _product(axes):
    import itertools
    return itertools.product(*axes.values())


@pytest.mark.parametrize("M", [1, 64, 512, 8192])
def test_some_heuristics_are_inside_the_space(M):
    import torch
    p = Problem(M, 4096, 22016)
    axes, feasible = SPACE.axes(p), set(SPACE.feasible(p, H100_SMEM))
    inside = [c for c in SPACE.heuristics(p, torch.device("cpu"))
              if c in feasible and all(c.to_dict()[k] in v for k, v in axes.items())]
    assert len(inside) >= 3


def test_compile_problem_keeps_triton_specializations():
    for M, N in [(1, 12288), (4, 32000), (4096, 22016), (37, 100)]:
        small = SPACE.compile_problem(Problem(M, 4096, N))
        assert small.M <= 31 and small.N <= 31
        assert (small.M == 1) == (M == 1) and small.M % 16 == M % 16
        assert small.N % 16 == N % 16 and small.K == 4096


def test_paired_epilogue_problems_keep_the_whole_space_and_compile_small():
    qkv = Problem(32, 4096, 6144, epilogue=rotary(128, 8))
    gated = Problem(32, 4096, 28672, epilogue=GATED)
    # A config without the form (split-K, TMA, 32 columns) still runs, as the runtime runs it: plain, then the
    # separate kernel (search_spaces/epilogues.py); the timing decides.
    for problem in (qkv, gated):
        plain = dataclasses.replace(problem, epilogue=PLAIN)
        assert SPACE.axes(problem) == SPACE.axes(plain)
        assert SPACE.violation(Config(16, 32, 128, 2, 5, 8, 2), problem, None) is None
    # Stacked tiles that the rotary form runs alike are one config: at head_dim 128, BLOCK_N 128 and 256 run 64.
    wide, wider = Config(16, 128, 128, 4, 4, 1), Config(16, 256, 128, 4, 4, 1)
    assert SPACE.runs_as(wide, qkv) == SPACE.runs_as(wider, qkv) == wide
    assert SPACE.runs_as(wider, gated) == wider and SPACE.runs_as(wider, Problem(32, 4096, 6144)) == wider
    feasible = SPACE.feasible(qkv, smem_limit=None)
    assert len({SPACE.runs_as(c, qkv) for c in feasible}) == len(feasible)
    assert len(feasible) < len(SPACE.feasible(dataclasses.replace(qkv, epilogue=PLAIN), None))
    # Compiled small: the rotary form keeps its N (the head counts are compiled in), the gated one N/2's residue.
    assert SPACE.compile_problem(qkv) == dataclasses.replace(qkv, M=16)
    assert SPACE.compile_problem(Problem(8, 4096, 22016, epilogue=GATED)).N == 32
    # The gated form writes half the columns.
    plain_bytes = SPACE.footprint_bytes(dataclasses.replace(gated, epilogue=PLAIN))
    assert SPACE.footprint_bytes(gated) == plain_bytes - 32 * 14336 * 2


@pytest.mark.parametrize("epilogue", [PLAIN, GATED, rotary(64, 1)], ids=["plain", "gated", "rotary"])
def test_the_baseline_is_the_runtimes_separate_path(epilogue, monkeypatch):
    import torch
    import torch.nn.functional as F

    from kernels import ops, reference
    from kernels.norm import rms_norm_triton

    # On CUDA tensors the runtime's ops run their Triton kernels; here those run in the interpreter.
    monkeypatch.setattr(ops, "use_triton", lambda t: True)
    norms = []
    monkeypatch.setattr(ops, "rms_norm_triton", lambda *a: norms.append(a) or rms_norm_triton(*a))
    problem = Problem(4, 64, 3 * 64, "float32", epilogue)
    x, w, r, gain, *_ = inputs = SPACE.make_inputs(problem, torch.device("cpu"), copies=1)[0]
    out = SPACE.launcher(None)(inputs)
    # The fused add + RMSNorm kernel with the unit gain of a folded weight, once; then cuBLAS (F.linear).
    ((_, got_gain, eps, residual),) = norms
    assert residual is r and got_gain is gain and bool((gain == 1).all()) and eps == 1e-6
    if epilogue == PLAIN:
        want = F.linear(reference.rms_norm_reference(x, gain, eps, r)[0], w)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_presets_have_the_published_shapes():
    sites = {s.name: (s.N, s.K) for s in parse_shapes("llama-7b")}
    # The final norm and lm_head stay unfused in the runtime, so nothing tunes their shape.
    assert sites == {"qkv": (12288, 4096), "gate_up": (22016, 4096)}
    assert {s.name: s.N for s in parse_shapes("llama-3-8b")} == {"qkv": 6144, "gate_up": 28672}
    assert {s.name: s.N for s in parse_shapes("qwen3-0.6b")}["qkv"] == 4096  # head_dim 128, not hidden/heads
    for preset in ("llama-13b", "mistral-7b"):
        assert len(parse_shapes(preset)) == 2
    # Each site in the form the runtime runs it; Qwen3 normalizes q and k before rotating them.
    forms = {s.name: s.epilogue for s in parse_shapes("mistral-7b")}
    assert forms == {"qkv": rotary(128, 8), "gate_up": GATED}
    assert {s.name: s.epilogue for s in parse_shapes("qwen3-0.6b")} == {"qkv": PLAIN, "gate_up": GATED}
    assert {s.epilogue for s in parse_shapes("llama-7b", kernel="linear")} == {PLAIN}


def test_config_json_and_nxk_lists(tmp_path):
    cfg = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4,
               vocab_size=32000)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert [(s.K, s.N) for s in parse_shapes(str(path))] == [(2048, 2048 + 2 * 4 * 64), (2048, 11264)]
    mixed = parse_shapes("12288x4096, 96X64 ,llama-7b")
    assert [(s.N, s.K) for s in mixed] == [(12288, 4096), (96, 64), (22016, 4096)]
    # Named twice, llama-7b's QKV is tuned once, in its rotary form, where the NxK first put it.
    assert (mixed[0].name, mixed[0].epilogue.kind) == ("qkv", "rotary")


def test_sites_need_no_vocab_size(tmp_path):
    cfg = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert [(s.name, s.K, s.N) for s in parse_shapes(str(path), "linear")] == [
        ("o_proj", 2048, 2048), ("down_proj", 5632, 2048)]
    assert [s.name for s in sites_from_config(cfg)] == ["qkv", "gate_up"]


@pytest.mark.parametrize("spec, match", [
    ("llama-9b", "not a preset"), ("12288x", "not a preset"), ("0x64", "zero dimension"), ("", "empty"),
    ("missing.json", "cannot read"),
])
def test_bad_shape_specs_name_the_problem(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_shapes(spec)


def test_bad_config_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_shapes(str(path))
    with pytest.raises(ValueError, match="intermediate_size"):
        sites_from_config(dict(hidden_size=64, num_attention_heads=1, vocab_size=10))


def test_m_buckets():
    assert parse_m_buckets(None) == list(DEFAULT_M_BUCKETS["rms_norm_linear"]) and parse_m_buckets(None)[-1] == 16384
    # The plain linear only where the runtime can run it (up to FusionOptions.linear_max_m; 64 for users who raise it).
    assert parse_m_buckets(None, "linear") == [1, 2, 4, 8, 16, 32, 64]
    assert parse_m_buckets("256, 1,16,16") == [1, 16, 256]
    for bad in ("a,b", "0,1", ""):
        with pytest.raises(ValueError, match="--m"):
            parse_m_buckets(bad)


def test_problem_rejects_bad_fields():
    with pytest.raises(ValueError, match="Problem.M"):
        Problem(0, 64, 64)
    with pytest.raises(ValueError, match="Problem.dtype"):
        Problem(1, 64, 64, "int8")
    with pytest.raises(ValueError, match="Problem.epilogue"):
        Problem(1, 64, 64, epilogue="silu")
    with pytest.raises(ValueError, match="epilogue.kv_heads=0: expected a positive int exactly for a rotary"):
        Epilogue("rotary", head_dim=32)  # no kv_heads
    with pytest.raises(ValueError, match="epilogue.head_dim=128: expected a positive int exactly for a rotary"):
        Epilogue(head_dim=128, kv_heads=1)
    with pytest.raises(ValueError, match="epilogue 'silu': expected '', 'gated' or 'rotary=<head_dim>/<kv_heads>'"):
        Epilogue.parse("silu")
    assert Epilogue.parse("rotary=128/8") == rotary(128, 8) and Epilogue.parse("") == PLAIN
    assert rotary(128, 8).form == "rotary=128/8" and GATED.form == "gated" and PLAIN.form == ""
    with pytest.raises(ValueError, match=r"Problem.N=256: expected \[q; k; v\] heads"):
        Problem(1, 64, 256, epilogue=rotary(128, 1))  # 2 heads: no room for q
    with pytest.raises(ValueError, match="Problem.N=640"):
        Problem(1, 64, 640, epilogue=rotary(128, 2))  # 1 q head for 2 KV heads
    assert Problem(1, 64, 768, epilogue=rotary(128, 1)).epilogue.kv_heads == 1
    with pytest.raises(ValueError, match="Problem.N=97: a gated"):
        Problem(1, 64, 97, epilogue=GATED)
