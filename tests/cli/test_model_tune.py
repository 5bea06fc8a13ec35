"""`nvc tune --shapes MODEL` tunes every kernel the runtime runs for it, attention too: the study list of a preset,
and a tiny model on FakeHardware through tune -> database -> export-table -> the runtime's attention layer
launching the tuned tile."""
import json
from collections import Counter

import torch

from autotune.workers import by_value
from db.queries import best_results
from db.storage import open_engine
from kernels import ops, reference
from nanovllm.layers.attention import Attention
from nanovllm.utils.context import reset_context, set_context
from nvc_cli.tune import model_studies
from tests.cli.test_cli import nvc
from tuning_table import load_table
from tuning_table.attention import AttentionTiles


def test_a_presets_default_tune_is_every_kernel_of_the_model():
    studies = model_studies(None, "llama-7b", "bfloat16", 1, None, None)
    assert Counter(k for k, _ in studies) == {"rms_norm_linear": 30, "linear": 14, "attention_decode": 14,
                                              "attention_prefill": 6}
    # The budget's order: the GEMMs' decode sizes, decode attention, the GEMMs' prefill sizes, prefill attention.
    kinds = [k if k.startswith("attention") else ("decode" if p.M <= 64 else "prefill") for k, p in by_value(studies)]
    assert list(dict.fromkeys(kinds)) == ["decode", "attention_decode", "prefill", "attention_prefill"]
    decode = [p for k, p in by_value(studies) if k == "attention_decode"]
    assert [(p.batch, p.context) for p in decode[:3]] == [(1, 512), (1, 2048), (1, 8192)]
    # An NxK beside a preset is a shape of the fused kernel only.
    assert Counter(k for k, _ in model_studies(None, "llama-7b,96x64", "bfloat16", 1, None, None))[
        "rms_norm_linear"] == 45
    assert {k for k, _ in model_studies(None, "96x64", "bfloat16", 1, None, None)} == {"rms_norm_linear"}


def test_a_model_tune_exports_attention_tiles_that_the_runtime_launches(tmp_path, monkeypatch):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(model_type="mistral", hidden_size=64, intermediate_size=96,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=80)))
    url = f"sqlite:///{tmp_path / 't.db'}"
    r = nvc("tune", "--gpu", "h100", "--shapes", str(config), "--m", "2", "--context", "32,64", "--trials", "2",
            "--dtype", "float16", "--storage", url)
    assert r.exit_code == 0, r.output
    assert ("tuning 8 studies (rms_norm_linear 2, linear 2, attention_decode 2, attention_prefill 2)" in r.output)
    best = best_results(open_engine(url, create=False))
    assert Counter(best["kernel"]) == {"rms_norm_linear": 2, "linear": 2, "attention_decode": 2,
                                       "attention_prefill": 2}
    assert "attention_decode|h100|float16|batch=2|context=64|q_heads=4|kv_heads=2|head_dim=16" in set(
        best["study_name"])
    out = tmp_path / "h100.json"
    r = nvc("export-table", "--out", str(out), "--storage", url)
    assert r.exit_code == 0, r.output
    table = load_table(out)
    tiles = AttentionTiles(table, 4, 2, 16, torch.float16)
    tuned = table.lookup("attention_decode", dict(batch=2, context=64, q_heads=4, kv_heads=2, head_dim=16),
                         torch.float16).config
    assert tiles.decode(1, 48) == tiles.decode(2, 64)
    assert tiles.decode(2, 64)[1] == tuned["num_splits"] and tiles.prefill(2, 64) is not None

    # The layer of a decode step of two sequences (48 and 20 keys, a 4-block table) launches the 64-key bucket's tile.
    layer = Attention(4, 16, 0.25, 2, rotary_emb=None)
    layer.tiles = tiles
    layer.k_cache, layer.v_cache = (torch.randn(8, 16, 2, 16, dtype=torch.float16) for _ in range(2))
    launched = []

    def spy(*args, **kwargs):
        launched.append((kwargs["tile"], args[7]))
        return ops_decode(*args, **kwargs)

    ops_decode = ops.paged_decode_attention_triton
    monkeypatch.setattr(ops, "use_triton", lambda t: True)
    monkeypatch.setattr(ops, "paged_decode_attention_triton", spy)
    tables = torch.tensor([[3, 5, 1, 0], [6, 2, 0, 0]], dtype=torch.int32)
    lens = torch.tensor([48, 20], dtype=torch.int32)
    set_context(is_prefill=False, block_tables=tables, seq_lens=lens)
    try:
        q = torch.randn(2, 4, 16, dtype=torch.float16)
        got = layer.attend(q)
    finally:
        reset_context()
    assert launched == [tiles.decode(2, 64)]
    want = reference.paged_decode_attention_reference(q, layer.k_cache, layer.v_cache, tables, lens, 0.25)
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)
