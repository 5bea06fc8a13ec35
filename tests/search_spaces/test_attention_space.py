"""The attention kernels' search spaces (search_spaces/attention.py): their candidates against the PyTorch reference
on the inputs they build, their problems and buckets from --shapes, and the runtime's tiles read from a table."""
import json

import pytest
import torch

from autotune.objective import Evaluator
from kernels import reference
from kernels.attention_decode import DEFAULT_TILE, DecodeTile
from kernels.attention_prefill import PrefillTile
from search_spaces import get_space
from search_spaces.attention import MAX_KV_TOKENS, AttentionShape, DecodeProblem, PrefillProblem, attention_shapes
from search_spaces.base import Params
from tests.doubles import FakeTimer
from tests.tuning_tables import table
from tuning_table import parse_table
from tuning_table.attention import AttentionTiles

DECODE, PREFILL = get_space("attention_decode"), get_space("attention_prefill")
CPU = torch.device("cpu")


def _reference(problem, inputs) -> torch.Tensor:
    scale = problem.head_dim ** -0.5
    if isinstance(problem, DecodeProblem):
        return reference.paged_decode_attention_reference(inputs.q, inputs.k_cache, inputs.v_cache,
                                                          inputs.block_tables, inputs.seq_lens, scale,
                                                          problem.window or None)
    return reference.paged_prefill_attention_reference(inputs.q, inputs.k_cache, inputs.v_cache, inputs.block_tables,
                                                       inputs.cu_seqlens_q, inputs.seq_lens, scale,
                                                       problem.window or None)


@pytest.mark.parametrize("space, problem, configs", [
    # Three sequences (one of 100 keys, two shorter), a group of 2; splits that divide the keys unevenly.
    (DECODE, DecodeProblem(3, 100, 4, 2, 16, 0, "float16"),
     [dict(BLOCK_N=16, num_warps=1, num_stages=1, num_splits=3), dict(BLOCK_N=32, num_warps=2, num_stages=2,
                                                                       num_splits=1)]),
    (DECODE, DecodeProblem(2, 200, 4, 1, 16, 48, "float32"), [dict(BLOCK_N=16, num_warps=4, num_stages=3,
                                                                   num_splits=2)]),
    # 40 tokens over 32-key sequences: one full prompt and a last one of 8 tokens after 24 cached.
    (PREFILL, PrefillProblem(40, 32, 4, 2, 16, 0, "float16"), [dict(BLOCK_M=16, BLOCK_N=16, num_warps=2,
                                                                    num_stages=1)]),
    (PREFILL, PrefillProblem(8, 64, 4, 1, 16, 20, "float32"), [dict(BLOCK_M=32, BLOCK_N=32, num_warps=4,
                                                                    num_stages=2)]),
])
def test_candidates_and_the_baseline_match_the_reference(space, problem, configs):
    ev = Evaluator(space, problem, CPU, FakeTimer(), l2_bytes=1)
    inputs = ev.inputs[0]
    want = _reference(problem, inputs)
    torch.testing.assert_close(ev.expected, want, atol=2e-3, rtol=2e-3)
    # Random, never zeros, and every output row carried by a few keys (not an average near 0).
    assert inputs.k_cache.abs().min() > 0 and want.float().abs().mean() > 0.2
    for config in [*space.heuristics(problem, CPU), *map(Params, configs)]:
        assert space.violation(config, problem, None) is None
        assert ev.check(config) is None, config


def test_a_wrong_kernel_fails_the_check():
    problem = DecodeProblem(2, 64, 2, 2, 16, 0, "float32")
    ev = Evaluator(DECODE, problem, CPU, FakeTimer(), l2_bytes=1)
    # The key lengths cut short by one: the last key's weight is missing.
    ev.inputs[0].seq_lens -= 1
    assert "wrong result" in ev.check(Params(dict(BLOCK_N=16, num_warps=1, num_stages=1, num_splits=1)))


def test_problems_from_presets_and_configs(tmp_path):
    decode = DECODE.problems("llama-7b", "bfloat16")
    assert len(decode) == 14 and all(p.batch * p.context <= MAX_KV_TOKENS for p in decode)
    assert {(p.q_heads, p.kv_heads, p.head_dim, p.window) for p in decode} == {(32, 32, 128, 0)}
    assert DecodeProblem(256, 1024, 32, 32, 128) not in decode and DecodeProblem(256, 512, 32, 32, 128) in decode
    assert len(PREFILL.problems("llama-7b", "bfloat16")) == 6
    # Both models' attention is one shape; a rank of 2 holds half of the heads.
    assert attention_shapes("mistral-7b,llama-3-8b", tp=2) == [AttentionShape(16, 4, 128, 0)]
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, sliding_window=32,
                                   layer_types=["sliding_attention", "full_attention"])))
    assert [(s.q_heads, s.kv_heads, s.head_dim, s.window) for s in attention_shapes(str(cfg))] == [
        (4, 2, 16, 0), (4, 2, 16, 32)]
    windowed = DECODE.problems(str(cfg), "float16", batches=[2], contexts=[64])[1]
    assert windowed.dims == dict(batch=2, context=64, q_heads=4, kv_heads=2, head_dim=16)
    assert windowed.form == "window=32" and DECODE.make_problem(windowed.dims, "float16", "window=32") == windowed
    p = PREFILL.problems(str(cfg), "float16", tokens=[100], contexts=[32])[0]
    assert p.q_lens == [32, 32, 32, 4] and PREFILL.make_problem(p.dims, "float16") == p
    with pytest.raises(ValueError, match="'4096x4096' is a GEMM shape"):
        DECODE.problems("llama-7b,4096x4096", "bfloat16")
    with pytest.raises(ValueError, match="every batch x context is above"):
        DECODE.problems("llama-7b", "bfloat16", batches=[256], contexts=[32768])


def test_the_compile_problem_keeps_the_block_tables_class():
    # A table of 2048 blocks (% 16 == 0) compiles as one of 16; one of 63 blocks (other) as one of 31.
    assert DECODE.compile_problem(DecodeProblem(64, 32768, 32, 8, 128)) == DecodeProblem(1, 256, 32, 8, 128)
    assert DECODE.compile_problem(DecodeProblem(4, 1000, 32, 8, 128)) == DecodeProblem(1, 496, 32, 8, 128)
    assert DECODE.violation(Params(dict(BLOCK_N=128, num_warps=4, num_stages=4, num_splits=1)),
                            DecodeProblem(1, 512, 32, 8, 128), 100_000).startswith("shared memory")
    assert "more splits" in DECODE.violation(Params(dict(BLOCK_N=64, num_warps=4, num_stages=1, num_splits=3)),
                                             DecodeProblem(1, 128, 32, 8, 128), None)


def _entry(kernel: str, buckets: list[tuple[dict, dict]]) -> dict:
    return {"dims": {"q_heads": 4, "kv_heads": 2, "head_dim": 16}, "dtype": "float16", "buckets": [
        {"bucket": b, "config": c, "latency_us": 1.0, "spread_us": 0.1, "baseline_us": 2.0, "speedup": 2.0}
        for b, c in buckets]}


def test_the_runtime_reads_a_steps_tiles_by_the_bucket_rule():
    small = dict(BLOCK_N=16, num_warps=1, num_stages=1, num_splits=2)
    long = dict(BLOCK_N=32, num_warps=2, num_stages=3, num_splits=8)
    data = table([])
    data["kernels"]["attention_decode"] = [_entry("attention_decode", [
        (dict(batch=1, context=512), small), (dict(batch=1, context=4096), long)])]
    data["kernels"]["attention_prefill"] = [_entry("attention_prefill", [
        (dict(tokens=512, context=1024), dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=2))])]
    t = parse_table(data)
    tiles = AttentionTiles(t, 4, 2, 16, torch.float16)
    assert tiles.decode(1, 300) == (DecodeTile(16, 1, 1), 2)
    assert tiles.decode(2, 600) == tiles.decode(1, 100_000) == (DecodeTile(32, 2, 3), 8)
    assert tiles.prefill(9000, 9000) == PrefillTile(32, 64, 4, 2)
    assert tiles.covered() == {"attention_decode": True, "attention_prefill": True}
    # Another shape, dtype or window, or no table: the kernels' defaults.
    for other in (AttentionTiles(t, 4, 2, 16, torch.bfloat16), AttentionTiles(t, 4, 2, 16, torch.float16, 64),
                  AttentionTiles(None, 4, 2, 16, torch.float16)):
        assert other.decode(1, 300) == (DEFAULT_TILE, None) and other.prefill(1, 300) is None


def _decode_tiles() -> AttentionTiles:
    """batch 1: contexts 256 and 512 share a tile, 1024 and 2048 another, 4096 and 8192 have one each; batch 8:
    contexts 8, 64, 300 and 2048, each its own tile."""
    a, b, c, d = (dict(BLOCK_N=n, num_warps=1, num_stages=1, num_splits=1) for n in (16, 32, 64, 128))
    data = table([])
    data["kernels"]["attention_decode"] = [_entry("attention_decode", [
        *[(dict(batch=1, context=ctx), tile) for ctx, tile in ((256, a), (512, a), (1024, b), (2048, b), (4096, c),
                                                               (8192, d))],
        *[(dict(batch=8, context=ctx), tile) for ctx, tile in ((8, a), (64, b), (300, c), (2048, d))]])]
    return AttentionTiles(parse_table(data), 4, 2, 16, torch.float16)


@pytest.mark.parametrize("batch, max_width, widths", [
    # Each run of equal tiles kept as its widest; contexts of max_width's and above (4096 and 8192) leave no width
    # of their own: the last width is max_width, whose tile is the one of max_width's context.
    (1, 256, [32, 128, 256]),
    (1, 300, [32, 128, 256, 300]),
    # Rounded down: 300 keys are 18 blocks of 16 (19 would look up 2048's tile), 8 keys at least one block.
    (8, 100, [4, 18, 100]),
    (2, 100, [4, 18, 100]),  # batch 2 reads batch 8's buckets, as `decode` does
    (16, 3, [3]),
])
def test_decode_graphs_are_captured_where_a_tuned_context_changes_the_tile(batch, max_width, widths):
    tiles = _decode_tiles()
    assert tiles.decode_widths(batch, max_width, 16) == widths
    # A step of n blocks runs in the narrowest graph that holds it, with the tile an eager step of n blocks takes.
    for n in range(1, max_width + 1):
        graph_width = next(w for w in widths if w >= n)
        assert tiles.decode(batch, graph_width * 16) == tiles.decode(batch, n * 16), n


def test_untuned_decode_graphs_are_one_per_batch_at_the_full_width():
    tuned = _decode_tiles().table
    for tiles in (AttentionTiles(None, 4, 2, 16, torch.float16), AttentionTiles(tuned, 4, 2, 16, torch.bfloat16),
                  AttentionTiles(tuned, 8, 2, 16, torch.float16), AttentionTiles(tuned, 4, 2, 16, torch.float16, 64)):
        assert tiles.decode_widths(1, 256, 16) == [256]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 on the GPU (the interpreter's bf16 dot is wrong)")
@pytest.mark.parametrize("space, problem", [
    (DECODE, DecodeProblem(4, 2048, 32, 8, 128)), (DECODE, DecodeProblem(64, 512, 32, 32, 128, 256)),
    (PREFILL, PrefillProblem(512, 1024, 32, 8, 128)), (PREFILL, PrefillProblem(4096, 1024, 32, 32, 128)),
])
def test_on_the_gpu_the_baseline_is_the_reference_and_candidates_pass(space, problem):
    device = torch.device("cuda")
    ev = Evaluator(space, problem, device, FakeTimer(), l2_bytes=1)
    torch.testing.assert_close(ev.expected.float(), _reference(problem, ev.inputs[0]).float(), atol=3e-2, rtol=3e-2)
    smem = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    for config in [*space.heuristics(problem, device), *space.feasible(problem, smem)[::97]]:
        assert ev.check(config) is None, config
