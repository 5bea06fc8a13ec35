"""Engine paths that must not change the tokens (prefix cache, preemption, chunked prefill) and bad input."""
import dataclasses
import gc
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from nanovllm import LLM, SamplingParams
from nanovllm.config import Config
from nanovllm.engine.sequence import Sequence
from tests.nanovllm.test_models_hf import DEVICE, make_checkpoint
from tests.nanovllm.test_models_hf import engine as make_engine

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3")
    make_checkpoint(path, "qwen3")
    return str(path)


def llm(path, **kwargs):
    # These engine paths do not depend on the fused RMSNorm+Linear kernel, which Triton's CPU interpreter makes
    # ~15x slower; tests/nanovllm/test_fused_runtime.py runs batching, chunked prefill and preemption fused on the CPU.
    if DEVICE.type == "cpu":
        kwargs.setdefault("fused_norm_linear", False)
    return make_engine(path, **kwargs)


def prompts(lens=(21, 9, 35), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 512, (n,), generator=g).tolist() for n in lens]


@pytest.fixture(scope="module")
def plain(path):
    """Each prompt alone through a fresh engine: the reference for the other paths."""
    return [llm(path).generate([p], GREEDY, use_tqdm=False)[0]["token_ids"] for p in prompts()]


def test_batched_equals_one_at_a_time(path, plain):
    outputs = llm(path).generate(prompts(), GREEDY, use_tqdm=False)
    assert [o["token_ids"] for o in outputs] == plain


def test_prefix_cache_hit_gives_the_same_tokens(path):
    prefix = prompts((40,), seed=3)[0]
    first, second = prefix + [5, 6, 7], prefix + [8, 9]
    expected = llm(path).generate([second], GREEDY, use_tqdm=False)[0]["token_ids"]
    engine = llm(path)
    engine.generate([first], GREEDY, use_tqdm=False)
    hits = engine.scheduler.block_manager.num_cache_hit_tokens
    assert engine.generate([second], GREEDY, use_tqdm=False)[0]["token_ids"] == expected
    assert engine.scheduler.block_manager.num_cache_hit_tokens - hits == 32


def test_identical_prompts_in_one_step_share_blocks(path):
    prompt = prompts((40,), seed=4)[0]
    expected = llm(path).generate([prompt], GREEDY, use_tqdm=False)[0]["token_ids"]
    engine = llm(path)
    for p in (prompt, prompt, prompt):
        engine.add_request(p, GREEDY)
    engine.step()  # one prefill step for all three
    bm = engine.scheduler.block_manager
    tables = [seq.block_table for seq in engine.scheduler.running]
    assert tables[0][:2] == tables[1][:2] == tables[2][:2]
    assert len(bm.used_block_ids) == 2 + 3  # two shared prefix blocks, one own block each
    assert bm.num_cache_hit_tokens == 64
    while not engine.is_finished():
        engine.step()
    assert engine.generate([prompt, prompt], GREEDY, use_tqdm=False)[0]["token_ids"] == expected


def test_whole_prompt_cached_gives_the_same_tokens(path):
    prompt = prompts((32,), seed=5)[0]  # exactly two blocks
    engine = llm(path)
    first = engine.generate([prompt], GREEDY, use_tqdm=False)[0]["token_ids"]
    assert engine.generate([prompt], GREEDY, use_tqdm=False)[0]["token_ids"] == first


def test_preemption_under_a_tiny_kv_cache_gives_the_same_tokens(path, plain):
    engine = llm(path, max_model_len=64, num_kvcache_blocks=6)
    outputs = engine.generate(prompts(), GREEDY, use_tqdm=False)
    assert engine.scheduler.num_preemptions > 0
    assert [o["token_ids"] for o in outputs] == plain


def test_chunked_prefill_gives_the_same_tokens(path, plain):
    engine = llm(path, max_num_batched_tokens=8)
    for p in prompts():
        engine.add_request(p, GREEDY)
    prefill_sizes = []
    while not engine.is_finished():
        _, num_tokens = engine.step()
        if num_tokens > 0:
            prefill_sizes.append(num_tokens)
    assert max(prefill_sizes) == 8 and sum(prefill_sizes) == sum(map(len, prompts()))
    outputs = engine.generate(prompts(), GREEDY, use_tqdm=False)
    assert [o["token_ids"] for o in outputs] == plain


def test_shared_prefixes_with_preemption_and_chunked_prefill_give_the_same_tokens(path):
    prefix = prompts((20,), seed=6)[0]
    shared = [prefix + tail for tail in prompts((3, 11, 6), seed=7)]
    expected = [llm(path).generate([p], GREEDY, use_tqdm=False)[0]["token_ids"] for p in shared]
    engine = llm(path, max_model_len=64, num_kvcache_blocks=6, max_num_batched_tokens=24)
    outputs = engine.generate(shared, GREEDY, use_tqdm=False)
    assert engine.scheduler.num_preemptions > 0 and engine.scheduler.block_manager.num_cache_hit_tokens > 0
    assert [o["token_ids"] for o in outputs] == expected


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(path, plain):
    engine = llm(path)
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=24, ignore_eos=True, seed=7)
    a = engine.generate(prompts(), params, use_tqdm=False)
    b = engine.generate(prompts(), params, use_tqdm=False)
    assert a == b
    # top_k=0 is off, as in Hugging Face, like top_k=-1.
    assert engine.generate(prompts(), dataclasses.replace(params, top_k=0), use_tqdm=False) == a
    top1 = SamplingParams(temperature=1.0, top_k=1, max_tokens=24, ignore_eos=True)
    assert [o["token_ids"] for o in engine.generate(prompts(), top1, use_tqdm=False)] == plain


def test_stop_token_ends_the_completion_and_is_kept(path, plain):
    stop = plain[0][5]
    params = SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop])
    out = llm(path).generate(prompts()[:1], params, use_tqdm=False)[0]["token_ids"]
    assert out == plain[0][:plain[0].index(stop) + 1]


def test_eos_finishes_with_reason_stop_and_special_tokens_are_left_out_of_the_text(path, monkeypatch):
    engine = llm(path)
    eos = engine.tokenizer.eos_token_id
    # Every sampled token is EOS, which the random model would rarely pick itself.
    monkeypatch.setattr(engine.model_runner, "_sample", lambda logits, seqs: torch.full((len(seqs),), eos))
    out = engine.generate(["Hello world"], SamplingParams(temperature=0, max_tokens=5), use_tqdm=False)
    assert out == [{"text": "", "token_ids": [eos], "finish_reason": "stop"}]


def test_a_request_cut_at_max_model_len_finishes_with_reason_length_and_one_warning(path, plain):
    engine = llm(path, max_model_len=40)
    with pytest.warns(UserWarning, match="2 of 3 requests stopped at max_model_len=40") as record:
        outputs = engine.generate(prompts(), GREEDY, use_tqdm=False)  # prompts of 21, 9 and 35 tokens
    assert len(record) == 1
    assert [o["token_ids"] for o in outputs] == [plain[0][:19], plain[1], plain[2][:5]]
    assert [o["finish_reason"] for o in outputs] == ["length"] * 3


def test_decode_runs_ahead_and_a_sequence_ending_early_keeps_its_tokens(path, plain, monkeypatch):
    stop = plain[1][4]
    # The second ends on a token (its row in the step ahead is dropped), the third by its length (left out of the
    # step ahead, whose input tokens are then a subset of the running step's rows).
    params = [GREEDY, SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop]),
              SamplingParams(temperature=0, max_tokens=9, ignore_eos=True)]
    engine = llm(path)
    scheduler, accepted = engine.scheduler, []
    schedule_ahead = scheduler.schedule_ahead
    monkeypatch.setattr(scheduler, "schedule_ahead", lambda seqs: accepted.append(schedule_ahead(seqs)) or accepted[-1])
    outputs = engine.generate(prompts(), params, use_tqdm=False)
    assert [o["token_ids"] for o in outputs] == [plain[0], plain[1][:plain[1].index(stop) + 1], plain[2][:9]]
    assert sum(1 for batch in accepted if batch) >= 20 and engine.ahead is None
    bm = scheduler.block_manager
    assert not bm.used_block_ids and bm.num_free_blocks == len(bm.blocks)


def test_a_steps_uploaded_arrays_each_start_on_16_bytes(path):
    """Triton compiles a kernel per pointer-alignment class: packed back to back, the class would follow the batch."""
    runner = llm(path).model_runner
    parts = runner._upload(torch.int32, [1, 2, 3], [[4, 5], [6, 7]], [8])
    assert [p.tolist() for p in parts] == [[1, 2, 3], [[4, 5], [6, 7]], [8]]
    assert [p.data_ptr() % 16 for p in parts] == [0, 0, 0]
    parts = runner._upload(torch.int64, [9, 10, 11], [12])
    assert [p.tolist() for p in parts] == [[9, 10, 11], [12]]
    assert [p.data_ptr() % 16 for p in parts] == [0, 0]


def test_string_prompts_and_per_prompt_params(path):
    engine = llm(path)
    texts = ["Hello world", "The quick brown fox"]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (3, 5)]
    outputs = engine.generate(texts, params, use_tqdm=False)
    assert [len(o["token_ids"]) for o in outputs] == [3, 5]
    assert [o["text"] for o in outputs] == [engine.tokenizer.decode(o["token_ids"], skip_special_tokens=True)
                                            for o in outputs]
    assert [o["finish_reason"] for o in outputs] == ["length", "length"]
    ids = [engine.tokenizer.encode(t) for t in texts]
    assert engine.generate(ids, params, use_tqdm=False) == outputs


def test_bad_model_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_path"):
        LLM(str(tmp_path / "missing"), device=DEVICE)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="Qwen3ForCausalLM") as info:
        LLM(str(tmp_path), device=DEVICE)
    assert "GPT2LMHeadModel" in str(info.value) and "LlamaForCausalLM" in str(info.value)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": "LlamaForCausalLM", "model_type": "llama"}))
    with pytest.raises(ValueError, match="'architectures' must be a list of class names, got 'LlamaForCausalLM'"):
        LLM(str(tmp_path), device=DEVICE)
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    with pytest.raises(ValueError, match="cannot parse .*config.json") as info:
        LLM(str(tmp_path), device=DEVICE)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("file, content, error", [
    ("tokenizer.json", "{damaged", "cannot load its tokenizer \\(JSONDecodeError: "),
    ("tokenizer.json", "{}", "cannot load its tokenizer \\("),  # JSON, but no tokenizer's (a KeyError, or another)
    ("model.safetensors", "{damaged", "cannot read the weights file .*model.safetensors: ")])
def test_damaged_checkpoint_files_are_named(path, tmp_path, file, content, error):
    damaged = shutil.copytree(path, tmp_path / "damaged")
    (damaged / file).write_text(content)
    with pytest.raises(ValueError, match=error) as info:
        llm(str(damaged))
    assert "\n" not in str(info.value)


def test_max_model_len_beyond_the_model_is_cut_with_a_warning(path):
    with pytest.warns(UserWarning, match="max_model_len=10000000 is more than .*max_position_embeddings=256"):
        assert llm(path, max_model_len=10**7).config.max_model_len == 256
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default is cut to the model's length without a word
        assert llm(path, max_model_len=None).config.max_model_len == 256


def test_default_kv_cache_size(path):
    gc.collect()
    torch.cuda.empty_cache()
    engine = llm(path, num_kvcache_blocks=None, max_model_len=100, max_num_seqs=3)
    if DEVICE.type == "cpu":
        assert engine.model_runner.num_kvcache_blocks == 3 * 7  # max_num_seqs sequences of max_model_len tokens
    else:
        assert engine.model_runner.num_kvcache_blocks >= 7
    del engine
    gc.collect()
    torch.cuda.empty_cache()


def test_kv_cache_too_small_for_one_sequence(path):
    with pytest.raises(ValueError, match="max_model_len=128"):
        llm(path, num_kvcache_blocks=4)


@pytest.mark.parametrize("kwargs", [dict(max_num_seqs=0), dict(gpu_memory_utilization=1.5), dict(dtype="int8"),
                                    dict(kvcache_block_size=12), dict(max_num_seqs=1.5), dict(max_model_len="64"),
                                    dict(max_model_len=True), dict(num_kvcache_blocks=2.5),
                                    dict(gpu_memory_utilization="0.5"), dict(enforce_eager="no"), dict(device="tpu")])
def test_invalid_engine_arguments(path, kwargs):
    with pytest.raises(ValueError, match=f"^{next(iter(kwargs))} .*got {next(iter(kwargs.values()))!r}") as info:
        llm(path, **kwargs)
    assert "\n" not in str(info.value)


def test_numpy_sizes_are_taken_as_python_ints(path):
    config = Config(path, device=DEVICE, max_num_seqs=np.int64(4), num_kvcache_blocks=np.int32(64),
                    tensor_parallel_size=np.int64(1))
    assert [type(v) for v in (config.max_num_seqs, config.num_kvcache_blocks, config.tensor_parallel_size)] == [int] * 3


def test_rejected_requests_leave_the_engine_serving(path, plain):
    engine = llm(path)
    good = prompts()
    for bad, error in [([], "empty prompt"), (list(range(1, 130)), "max_model_len=128"), ([1, 99999], "token ids")]:
        with pytest.raises(ValueError, match=error):
            engine.generate(good[:1] + [bad], GREEDY, use_tqdm=False)
    for bad, error in [([1, True], r"prompts\[1\]\[1\] must be a token id \(int\), got bool True"),
                       ([2.0], r"prompts\[1\]\[0\] .* got float 2.0"), (5, r"prompts\[1\] must be a str")]:
        with pytest.raises(TypeError, match=error):
            engine.generate(good[:1] + [bad], GREEDY, use_tqdm=False)
    with pytest.raises(TypeError, match=r"sampling_params for prompts\[2\]"):
        engine.generate(good, [GREEDY, GREEDY, {"temperature": 0}], use_tqdm=False)
    for bad, error in [(None, "got NoneType"), (iter(good), "got list_iterator"), (torch.tensor(good[:1]), "got Tensor"),
                       ("text", "not a single prompt"), (good[0], "not a single prompt")]:
        with pytest.raises(TypeError, match=f"^prompts must be a list of prompts .*{error}"):
            engine.generate(bad, GREEDY, use_tqdm=False)
    assert engine.is_finished()
    assert [o["token_ids"] for o in engine.generate(good, GREEDY, use_tqdm=False)] == plain


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_decode_matches_eager(path, plain):
    graphed = llm(path)
    assert graphed.model_runner.graphs.graphs
    eager = llm(path, enforce_eager=True)
    assert not eager.model_runner.graphs
    assert [o["token_ids"] for o in eager.generate(prompts(), GREEDY, use_tqdm=False)] == plain


def _sampling_runner():
    """A ModelRunner with only what sampling needs, recording what its sampler is told."""
    from nanovllm.engine.model_runner import ModelRunner
    runner = ModelRunner.__new__(ModelRunner)
    runner.device, told = torch.device("cpu"), []
    runner.sampler = lambda logits, *tensors, filtered: (told.append(filtered)
                                                         or torch.zeros(len(logits), dtype=torch.long))
    return runner, told


def test_all_greedy_batches_take_one_argmax_without_uploads(monkeypatch):
    runner, told = _sampling_runner()
    monkeypatch.setattr(type(runner), "_upload", lambda *a: pytest.fail("greedy sampling uploaded parameters"))
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0], [3.0, -1.0, 0.0, 3.0]])
    seqs = [Sequence([1], SamplingParams(temperature=0, top_k=1)), Sequence([1], SamplingParams(temperature=0))]
    # Ties go to the first maximum, as the sampler's greedy rows and HF's argmax do.
    assert runner._sample(logits, seqs).tolist() == [1, 0] and told == []


@pytest.mark.parametrize("top_k, top_p, filtered", [(-1, 1.0, False), (4, 1.0, False), (9, 1.0, False),
                                                    (3, 1.0, True), (-1, 0.9, True)])
def test_the_sampler_is_told_from_the_parameters_whether_to_filter(monkeypatch, top_k, top_p, filtered):
    runner, told = _sampling_runner()
    seqs = [Sequence([1], SamplingParams(temperature=0)), Sequence([1], SamplingParams(top_k=top_k, top_p=top_p))]
    runner._sample(torch.zeros(2, 4), seqs)  # a vocabulary of 4: top_k 4 or more keeps every token
    assert told == [filtered]
