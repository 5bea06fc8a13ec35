"""The fused RMSNorm+Linear kernel inside LLM(): same tokens as the unfused path, and how its configs are chosen."""
import dataclasses
import json
import logging
import warnings

import pytest
import torch
import transformers

from kernels.config import Config, default_config
from kernels.epilogue import GATED
from kernels.epilogue import PLAIN as NO_EPILOGUE
from nanovllm import LLM, SamplingParams
from nanovllm.engine import model_runner
from nanovllm.engine.sequence import Sequence
from nanovllm.layers import fused_norm_linear as fnl
from tuning_table import FusionOptions, LookupTable, find, learned, open_table, select, select_configs
from tests.nanovllm.test_models_hf import COMMON, DEVICE, engine, hf_greedy, make_checkpoint
from tests.tuning_tables import INTERPRETER_CONFIG, entry, table, write

GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
SMALL = dataclasses.replace(INTERPRETER_CONFIG, BLOCK_M=16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Tiny Qwen3 (tied embeddings, gains drawn in [0.5, 1.5]): K = 64, N = 256 for both fused sites."""
    path = tmp_path_factory.mktemp("qwen3")
    return str(path), make_checkpoint(path, "qwen3")


def prompts():
    g = torch.Generator().manual_seed(2)
    return [torch.randint(1, 512, (n,), generator=g).tolist() for n in (19, 7, 45)]


def test_fused_gives_the_tokens_of_unfused_and_transformers(checkpoint):
    path, model = checkpoint
    unfused = engine(path, fused_norm_linear=False)
    expected = [o["token_ids"] for o in unfused.generate(prompts(), GREEDY, use_tqdm=False)]
    assert expected == [hf_greedy(model, p)[:16] for p in prompts()]
    # The 71-token prefill runs the separate path on the folded weights (M > untuned_max_m), decode the kernel.
    assert [o["token_ids"] for o in engine(path).generate(prompts(), GREEDY, use_tqdm=False)] == expected
    # Chunked prefill and preemption give the fused kernel ragged M and the first layer's residual-free call.
    fused = engine(path, max_model_len=64, num_kvcache_blocks=6, max_num_batched_tokens=24)
    assert [o["token_ids"] for o in fused.generate(prompts(), GREEDY, use_tqdm=False)] == expected
    assert fused.scheduler.num_preemptions > 0


def test_gains_are_folded_once_and_tied_embeddings_untouched(checkpoint):
    path, model = checkpoint
    runner = engine(path).model_runner
    plain = engine(path, fused_norm_linear=False).model_runner
    layer, plain_layer = runner.model.model.layers[0], plain.model.model.layers[0]
    gain = plain_layer.post_attention_layernorm.weight
    torch.testing.assert_close(layer.mlp.gate_up_proj.weight, plain_layer.mlp.gate_up_proj.weight * gain)
    assert torch.all(layer.post_attention_layernorm.weight == 1)  # the separate path (large M) is still right
    assert plain_layer.mlp.gate_up_proj.launches is None
    torch.testing.assert_close(plain_layer.mlp.gate_up_proj.weight.cpu(), torch.cat(
        [model.model.layers[0].mlp.gate_proj.weight, model.model.layers[0].mlp.up_proj.weight]).cpu())
    assert runner.model.lm_head.weight is runner.model.model.embed_tokens.weight
    torch.testing.assert_close(runner.model.lm_head.weight.cpu(), model.lm_head.weight.cpu())


def test_hot_path_only_indexes_the_configs_resolved_at_load(checkpoint, tmp_path, monkeypatch):
    path, _ = checkpoint
    qkv = entry(64, 256, {4: SMALL, 32: INTERPRETER_CONFIG, 128: INTERPRETER_CONFIG})
    qkv["buckets"][2]["speedup"] = 0.9  # the tuner found the separate path faster from M = 33 on
    small = write(table([qkv]), tmp_path / "t.json")
    llm = engine(path, tuning_table=small, max_num_batched_tokens=40)
    launches = llm.model_runner.model.model.layers[1].self_attn.qkv_proj.launches
    configs = [launch.config if launch else None for launch in launches]
    assert isinstance(launches, list) and len(launches) == 512 + 1  # max(max_num_batched_tokens, max_num_seqs, 512)
    assert configs[1] == configs[4] == SMALL and configs[5] == configs[32] == INTERPRETER_CONFIG
    assert configs[33] is None and configs[128] is None and configs[512] is None  # cuBLAS is faster there

    def fail(*args, **kwargs):
        raise AssertionError("a config was resolved during a forward pass")

    monkeypatch.setattr(LookupTable, "bucket", fail)
    monkeypatch.setattr(select, "default_config", fail)
    monkeypatch.setattr(select, "check_launch", fail)
    assert len(llm.generate(prompts(), GREEDY, use_tqdm=False)[2]["token_ids"]) == 16


def resolve(tuning_table, shapes=((64, 256), (64, 128)), max_m=64, device=torch.device("cpu"),
            kernel="rms_norm_linear", options=FusionOptions()):
    """(K, N) -> the config each M launches (None: the separate path), by tuning_table's selection rule."""
    path, table = open_table(tuning_table, device)
    return {(K, N): [launch.config if launch else None for launch in select_configs(
        table, kernel, K, N, torch.float32, NO_EPILOGUE, device, max_m, options, f"tuning table {path}")]
        for K, N in shapes}


def test_table_covering_part_of_the_model_logs_and_warns_once(checkpoint, tmp_path, caplog):
    path = write(table([entry(64, 128, {1: SMALL})]), tmp_path / "t.json")
    with caplog.at_level(logging.INFO, logger=model_runner.__name__), pytest.warns(UserWarning) as record:
        engine(checkpoint[0], tuning_table=path)
    assert [str(w.message) for w in record] == [
        f"tuning table {path} has no float32 configs for (K, N) [(64, 256)]: those run the learned fallback's configs"]
    assert f"tuning table {path} (h100, torch {torch.__version__}" in caplog.text
    assert "rms_norm_linear: " in caplog.text and "covers 0 of the model's 1 float32 shapes" in caplog.text


def test_the_bucket_rule_and_the_untuned_default(tmp_path):
    path = write(table([entry(64, 256, {1: SMALL, 16: INTERPRETER_CONFIG})]), tmp_path / "t.json")
    configs = resolve(path)
    assert configs[64, 256][1] == SMALL and configs[64, 256][2] == configs[64, 256][16] == INTERPRETER_CONFIG
    # The untuned shape: the learned rule's config up to untuned_max_m (16) rows (at M = 1 the nearest bucket is the
    # table's own (64, 256) one), else the default where nothing near was tuned; the separate path above.
    rule, cpu = learned.shipped_rule(open_table(path, torch.device("cpu"))[1]), torch.device("cpu")
    assert configs[64, 128][1] == SMALL
    assert configs[64, 128][:17] == [rule.predict("rms_norm_linear", max(m, 1), 64, 128, NO_EPILOGUE, cpu, 4) or
                                     default_config(max(m, 1), 128, 64, cpu, 4) for m in range(17)]
    assert configs[64, 128][17:] == [None] * 48
    by_m = resolve(path, max_m=100)
    # Past the largest tuned bucket (16) nothing was measured: the separate path.
    assert by_m[64, 256][16] == INTERPRETER_CONFIG and by_m[64, 256][17:] == [None] * 84
    # The options object moves the limits: defaults up to 32 rows, and so the tuned shape's too.
    wider = resolve(path, max_m=40, options=FusionOptions(untuned_max_m=32))
    assert wider[64, 128][32] == INTERPRETER_CONFIG and wider[64, 128][33] is None  # the table's M = 16, nearest
    assert wider[64, 256][32] == INTERPRETER_CONFIG and wider[64, 256][33] is None


def test_a_gated_site_launches_its_form_where_the_config_has_one(tmp_path):
    split = dataclasses.replace(SMALL, BLOCK_K=32, SPLIT_K=2)  # split-K has no gated form: the plain kernel, then SiLU-and-mul
    _, t = open_table(write(table([entry(64, 256, {1: SMALL, 4: split})]), tmp_path / "t.json"), torch.device("cpu"))
    launches = select_configs(t, "rms_norm_linear", 64, 256, torch.float32, GATED, torch.device("cpu"), 8)
    assert launches[1].epilogue == GATED and launches[1].config == GATED.launched(SMALL)
    assert launches[4].epilogue == NO_EPILOGUE and launches[4].config == split
    with pytest.raises(ValueError, match="kernel 'linear' has no epilogue"):
        select_configs(t, "linear", 64, 256, torch.float32, GATED, torch.device("cpu"), 8)


def test_discovery_order_argument_then_environment_then_shipped_table(tmp_path, monkeypatch):
    arg = write(table([entry(64, 256, {1: SMALL})]), tmp_path / "arg.json")
    env = write(table([entry(64, 256, {1: INTERPRETER_CONFIG})]), tmp_path / "env.json")
    shipped = tmp_path / "tables"
    shipped.mkdir()
    write(table([entry(64, 256, {1: dataclasses.replace(SMALL, num_warps=2)})]), shipped / "h100.json")
    monkeypatch.setattr(find, "shipped_table", lambda gpu: shipped / f"{gpu}.json" if gpu == "h100" else None)
    monkeypatch.setattr(find, "gpu_short_name", lambda device: "h100")
    cuda = torch.device("cuda")  # only its name is read: the lookups below run on this CPU
    monkeypatch.setenv(find.TUNING_TABLE_ENV, env)
    assert find.find_table(arg, cuda) == tmp_path / "arg.json"
    assert find.find_table(None, cuda) == tmp_path / "env.json"
    assert find.find_table(False, cuda) is None
    monkeypatch.delenv(find.TUNING_TABLE_ENV)
    assert find.find_table(None, cuda) == shipped / "h100.json"
    assert find.find_table(None, torch.device("cpu")) is None  # no card, no table, no warning
    monkeypatch.setattr(find, "gpu_short_name", lambda device: "a100")
    with pytest.warns(UserWarning, match="no tuning table shipped for a100 and NANOVLLM_TUNING_TABLE unset"):
        assert find.find_table(None, cuda) is None


def test_the_shipped_tables_are_package_data():
    assert find.shipped_table("h200").name == "h200.json" and find.shipped_table("h200").is_file()
    assert find.shipped_table("t4") is None


def test_no_table_means_the_heuristic_without_warnings(monkeypatch):
    monkeypatch.setenv(find.TUNING_TABLE_ENV, "/nonexistent.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        configs = resolve(False)
    # The learned rule over the shipped tables (tuning_table/learned.py).
    predicted = learned.shipped_rule().predict("rms_norm_linear", 7, 64, 256, NO_EPILOGUE, torch.device("cpu"), 4)
    assert predicted is not None and configs[64, 256][7] == predicted


def test_buckets_where_the_baseline_won_run_the_separate_path(tmp_path):
    data = table([entry(64, 256, {4: INTERPRETER_CONFIG, 16: INTERPRETER_CONFIG})])
    data["kernels"]["rms_norm_linear"][0]["buckets"][1]["speedup"] = 0.6  # M in 5..16: the baseline was faster
    configs = resolve(write(data, tmp_path / "t.json"))[64, 256]
    assert configs[1] == configs[4] == INTERPRETER_CONFIG
    assert configs[5] is None and configs[16] is None and configs[64] is None


def test_table_from_other_software_is_used_with_a_warning(tmp_path):
    path = write(table([entry(64, 256, {1: SMALL}), entry(64, 128, {1: SMALL})], torch_version="2.0.0",
                       triton_version="2.1.0"), tmp_path / "old.json")
    with pytest.warns(UserWarning, match=r"tuned for torch 2\.0\.0 \(running .*\), triton 2\.1\.0"):
        configs = resolve(path)
    assert configs[64, 256][1] == configs[64, 128][16] == SMALL


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "something else"}), "'format'"),
    (json.dumps(table([entry(64, 256, {0: SMALL})])), "bucket M 0"),
    (json.dumps(table([{"K": 64, "N": 256, "dtype": "float32", "buckets": [
        {"M": 1, "config": {"BLOCK_M": 24}, "latency_us": 1, "spread_us": 0, "baseline_us": 1, "speedup": 1}]}])),
     "BLOCK_M"),
])
def test_malformed_table_is_a_clear_error(checkpoint, tmp_path, monkeypatch, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"lookup table {path}.*{problem}"):
        resolve(str(path))
    with pytest.raises(ValueError, match="cannot read"):
        resolve(str(tmp_path / "missing.json"))
    # LLM() reads the table before the weights load, and says where its path came from.
    def no_weights(*args):
        raise AssertionError("the weights loaded before the table was read")
    monkeypatch.setattr(model_runner, "load_model", no_weights)
    with pytest.raises(ValueError, match=f"^tuning_table: lookup table {path}.*{problem}"):
        LLM(checkpoint[0], device=DEVICE, tuning_table=path)
    monkeypatch.setenv(find.TUNING_TABLE_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=r"^\$NANOVLLM_TUNING_TABLE: lookup table .*missing.json: cannot read"):
        LLM(checkpoint[0], device=DEVICE)


@pytest.mark.parametrize("kwargs, match", [
    (dict(fused_norm_linear="yes"), "fused_norm_linear"),
    (dict(tuning_table=3), "tuning_table"),
    (dict(fused_norm_linear=False, tuning_table="t.json"), "fused_norm_linear=False"),
])
def test_bad_fusion_arguments(checkpoint, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LLM(checkpoint[0], device=DEVICE, **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bfloat16_fused_tracks_unfused_on_gpu(checkpoint):
    path, _ = checkpoint
    logits = []
    for fused in (False, True):
        llm = engine(path, dtype=torch.bfloat16, fused_norm_linear=fused)
        seqs = [Sequence(p) for p in prompts()[:2]]  # 26 rows: the prefill runs the kernel too
        for seq in seqs:
            llm.scheduler.block_manager.allocate(seq)
            seq.num_scheduled_tokens = len(seq)
        logits.append(llm.model_runner.compute_prefill_logits(seqs))
        assert llm.model_runner.graphs.graphs
        outputs = llm.generate(prompts(), GREEDY, use_tqdm=False)
        assert [len(o["token_ids"]) for o in outputs] == [16] * 3
    assert torch.cosine_similarity(logits[0], logits[1], dim=-1).min() > 0.999


def test_tma_configs_fall_back_to_the_default_on_a_gpu_without_tma(tmp_path, monkeypatch):
    tma = Config(16, 32, 64, num_stages=2, TMA=2)
    path = write(table([entry(64, 256, {1: SMALL, 16: tma}), entry(64, 128, {1: SMALL})]), tmp_path / "t.json")
    monkeypatch.setattr(select, "device_has_tma", lambda device: False)
    with pytest.warns(UserWarning, match=r"TMA configs for K=64, N=256 need an sm_90\+ GPU"):
        configs = resolve(path)
    assert configs[64, 256][1] == SMALL
    assert configs[64, 256][2:17] == [default_config(m, 256, 64, torch.device("cpu"), 4) for m in range(2, 17)]


def test_rotary_and_kv_write_in_the_qkv_epilogue_give_the_same_tokens(tmp_path, monkeypatch):
    """A Llama with head_dim 64 (the tiny models' 16 is below the epilogue's smallest tile): the fused QKV site
    rotates q and k and writes the cache itself, prefill and decode, and the tokens stay HF's."""
    model = make_checkpoint(tmp_path, transformers.LlamaConfig(
        **{**COMMON, "num_attention_heads": 2, "num_key_value_heads": 1}, head_dim=64))
    expected = [hf_greedy(model, p)[:16] for p in prompts()]
    rotated = []
    fused = fnl.fused_rms_norm_linear
    monkeypatch.setattr(fnl, "fused_rms_norm_linear",
                        lambda *a, **kw: rotated.append(kw["rotary"] is not None) or fused(*a, **kw))
    # q: 2 x 64, k and v: 1 x 64: the QKV site is (K, N) = (64, 256), as is the gate/up site.
    path = write(table([entry(64, 256, {1: INTERPRETER_CONFIG})]), tmp_path / "t.json")
    llm = engine(str(tmp_path), tuning_table=path, enforce_eager=True, max_num_batched_tokens=16)
    assert llm.model_runner.model.model.layers[0].self_attn.qkv_proj.launches[1].epilogue.kind == "rotary"
    assert [o["token_ids"] for o in llm.generate(prompts(), GREEDY, use_tqdm=False)] == expected
    # Each forward pass runs two QKV sites (rotary) and two gate/up sites.
    assert rotated and rotated == [True, False] * (len(rotated) // 2)


# The norm-free GEMM on the tiny model's o_proj and down_proj (both K = 128, N = 64): one program per 64-row tile.
PLAIN = Config(64, 64, 128, num_warps=4, num_stages=1, GROUP_M=1)  # noqa: F811 - a config, not the epilogue
SMALL_PLAIN = dataclasses.replace(PLAIN, BLOCK_M=16)


def plain_table(tmp_path, buckets: dict[int, tuple[Config, float]]) -> str:
    """The interpreter's fused entries plus "linear" entries for (128, 64): M -> (config, speedup over cuBLAS)."""
    linear = entry(128, 64, {m: c for m, (c, _) in buckets.items()})
    for b in linear["buckets"]:
        b["speedup"] = buckets[b["M"]][1]
    fused = [entry(64, n, {1: INTERPRETER_CONFIG}) for n in (128, 256, 512)]
    return write(table(fused, linear=[linear]), tmp_path / "plain.json")


def test_plain_linears_run_the_tuned_gemm_and_give_the_same_tokens(checkpoint, tmp_path, monkeypatch):
    path, model = checkpoint
    expected = [o["token_ids"] for o in engine(path, fused_norm_linear=False).generate(prompts(), GREEDY,
                                                                                          use_tqdm=False)]
    assert expected == [hf_greedy(model, p)[:16] for p in prompts()]
    calls, fused_calls = [], []
    run, fused = fnl.linear_residual, fnl.fused_rms_norm_linear
    monkeypatch.setattr(fnl, "linear_residual", lambda *a, **kw: calls.append(a[0].shape[0]) or run(*a, **kw))
    monkeypatch.setattr(fnl, "fused_rms_norm_linear",
                        lambda *a, **kw: fused_calls.append((kw.get("row_sumsq") is not None, kw["epilogue"] == GATED))
                        or fused(*a, **kw))
    # Eager, so that decode steps run the layers in Python (a CUDA graph replays what its capture recorded).
    llm = engine(path, tuning_table=plain_table(tmp_path, {64: (PLAIN, 1.1)}), max_num_batched_tokens=16,
                 enforce_eager=True)
    layer = llm.model_runner.model.model.layers[0]
    assert layer.self_attn.o_proj.launches is layer.mlp.down_proj.launches
    assert [o["token_ids"] for o in llm.generate(prompts(), GREEDY, use_tqdm=False)] == expected
    # Chunked prefill (16-row chunks, linear_max_m) and decode (3 rows) ran the kernel: 2 sites x 2 layers a step.
    assert max(calls) == FusionOptions().linear_max_m == 16 and 3 in calls and len(calls) % 4 == 0
    # Of a forward pass's four fused sites, all but the first layer's input norm start from the statistics of
    # the plain linear before them, and the MLP's gate/up sites apply SiLU-and-mul in their epilogue.
    per_pass = [(False, False), (True, True), (True, False), (True, True)]
    assert fused_calls and fused_calls == per_pass * (len(fused_calls) // 4)


def test_plain_linear_configs_follow_the_bucket_rule(checkpoint, tmp_path, caplog):
    path, _ = checkpoint
    with caplog.at_level(logging.INFO, logger=model_runner.__name__):
        buckets = {4: (SMALL_PLAIN, 1.2), 8: (PLAIN, 0.9), 16: (PLAIN, 1.1), 32: (PLAIN, 1.1)}
        llm = engine(path, tuning_table=plain_table(tmp_path, buckets))
    assert "linear: tuning table" in caplog.text and "covers 1 of the model's 1 float32 shapes" in caplog.text
    configs = [launch.config if launch else None
               for launch in llm.model_runner.model.model.layers[1].mlp.down_proj.launches]
    assert configs[0] == configs[1] == configs[4] == SMALL_PLAIN
    # cuBLAS was faster at M = 5..8; past linear_max_m (16) the tuned GEMM lost end to end, past the largest
    # bucket nothing was measured against cuBLAS.
    assert configs[5:9] == [None] * 4 and configs[9:17] == [PLAIN] * 8 and configs[17:33] == [None] * 16
    assert len(configs) > 33 and configs[33:] == [None] * (len(configs) - 33)
    assert all(launch.kernel == "rms_norm_linear"
               for launch in llm.model_runner.model.model.layers[0].self_attn.qkv_proj.launches if launch)
    # No "linear" entries, no table, or the unfused runtime: F.linear everywhere.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=model_runner.__name__):
        covered = engine(path).model_runner.model.model.layers[0]
    assert any(r.getMessage().startswith("linear: ") and "covers 0 of the model's 1 float32 shapes" in r.getMessage()
               for r in caplog.records)
    assert set(covered.self_attn.o_proj.launches) == set(covered.mlp.down_proj.launches) == {None}
    assert engine(path, fused_norm_linear=False).model_runner.model.model.layers[0].mlp.down_proj.launches is None
    assert resolve(False, [(128, 64)], 8, kernel="linear") == {(128, 64): [None] * 9}


def test_a_plain_linear_config_this_card_cannot_run_falls_back_to_f_linear(checkpoint, tmp_path, monkeypatch):
    path, _ = checkpoint
    big = Config(64, 128, 128, num_warps=4, num_stages=2, GROUP_M=1)  # 196,608 B of fp32 tiles
    monkeypatch.setattr(select, "device_smem_limit", lambda device: 100_000)  # a smaller card than the tuner's
    with pytest.warns(UserWarning, match=r"linear config for K=128, N=64 cannot run here .* F\.linear runs there"):
        llm = engine(path, tuning_table=plain_table(tmp_path, {4: (big, 1.2), 16: (PLAIN, 1.1)}))
    configs = [launch.config if launch else None
               for launch in llm.model_runner.model.model.layers[0].mlp.down_proj.launches]
    assert configs[1:5] == [None] * 4 and configs[5:17] == [PLAIN] * 12


def test_plain_linear_tma_configs_fall_back_to_f_linear_on_a_gpu_without_tma(checkpoint, tmp_path, monkeypatch):
    path, _ = checkpoint
    tma = dataclasses.replace(PLAIN, TMA=2)
    monkeypatch.setattr(select, "device_has_tma", lambda device: False)
    with pytest.warns(UserWarning, match=r"linear config for K=128, N=64 cannot run here \(Config.TMA=2: TMA needs"):
        configs = resolve(plain_table(tmp_path, {4: (SMALL_PLAIN, 1.2), 16: (tma, 1.1)}), [(128, 64)], 32,
                          kernel="linear")
    assert configs[128, 64][1:5] == [SMALL_PLAIN] * 4 and configs[128, 64][5:] == [None] * 28
