"""Each supported architecture, as a tiny random checkpoint saved by transformers, against transformers itself."""
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from nanovllm import LLM, SamplingParams
from nanovllm.engine.sequence import Sequence
from nanovllm.utils.random_checkpoint import build_tokenizer
from tests.tuning_tables import interpreter_table

COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, eos_token_id=0, bos_token_id=0)
CONFIGS = {
    # llama3 rope scaling with a small original context, so that the scaled frequencies differ from the plain ones.
    "llama": lambda: LlamaConfig(**COMMON, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    # A window shorter than the prompts, so that it matters.
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=24, head_dim=16),
    "qwen2": lambda: Qwen2Config(**COMMON),
    # head_dim * heads != hidden_size, as in the real Qwen3 models.
    "qwen3": lambda: Qwen3Config(**COMMON, head_dim=32, tie_word_embeddings=True),
}
PROMPT_LENS = [5, 17, 40]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
MAX_TOKENS = 32


def make_checkpoint(path, arch):
    """arch: a name in CONFIGS, or a transformers config."""
    torch.manual_seed(0)
    config = CONFIGS[arch]() if isinstance(arch, str) else arch
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    # Random init leaves most weights tiny; larger weights make the greedy tokens depend on every detail.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.1)
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return model.to(DEVICE)


def engine(path, **kwargs) -> LLM:
    """An engine on the test device in float32; the cache size is fixed so that no test sizes it from GPU memory."""
    kwargs = {"device": DEVICE, "dtype": torch.float32, "max_model_len": 128, "max_num_seqs": 8,
              "num_kvcache_blocks": 64, **kwargs}
    # On the CPU the fused RMSNorm+Linear kernel runs in Triton's interpreter, fast only with few, large tiles; on a
    # GPU the default configs (a shipped table covers none of these tiny shapes, and would say so).
    if kwargs.get("fused_norm_linear", True):
        kwargs.setdefault("tuning_table", interpreter_table() if DEVICE.type == "cpu" else False)
    return LLM(path, **kwargs)


def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, 512, (n,), generator=g).tolist() for n in PROMPT_LENS]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    return str(path), make_checkpoint(path, request.param)


def hf_greedy(model, prompt: list[int]) -> list[int]:
    out = model.generate(torch.tensor([prompt], device=DEVICE),
                         attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=DEVICE),
                         do_sample=False, max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS, eos_token_id=None,
                         pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_matches_transformers(checkpoint):
    path, model = checkpoint
    llm = engine(path)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = llm.generate(prompts(), params, use_tqdm=False)
    for prompt, out in zip(prompts(), outputs):
        assert out["token_ids"] == hf_greedy(model, prompt)
        assert out["text"] == llm.tokenizer.decode(out["token_ids"], skip_special_tokens=True)


def prefill_logits(llm, model):
    """(ours, transformers') last-position logits of each prompt, prefilled as one batch by the engine."""
    seqs = [Sequence(p) for p in prompts()]
    for seq in seqs:
        llm.scheduler.block_manager.allocate(seq)
        seq.num_scheduled_tokens = len(seq)
    ours = llm.model_runner.compute_prefill_logits(seqs)
    for seq, row in zip(seqs, ours):
        with torch.no_grad():
            yield row, model(torch.tensor([seq.token_ids], device=DEVICE)).logits[0, -1]


def test_prefill_logits_close(checkpoint):
    path, model = checkpoint
    for ours, theirs in prefill_logits(engine(path), model):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_sharded_checkpoint_loads_through_its_index(tmp_path):
    model = make_checkpoint(tmp_path / "single", "qwen2")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    build_tokenizer().save_pretrained(tmp_path / "sharded")
    # Files outside the index (Mistral repos ship a consolidated.safetensors in another naming) are ignored.
    save_file({"tok_embeddings.weight": torch.zeros(2, 2)}, str(tmp_path / "sharded" / "consolidated.safetensors"))
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    single = engine(str(tmp_path / "single")).generate(prompts(), params, use_tqdm=False)
    assert engine(str(tmp_path / "sharded")).generate(prompts(), params, use_tqdm=False) == single


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bfloat16_on_gpu_tracks_float32_transformers(checkpoint):
    path, model = checkpoint
    llm = engine(path, dtype=torch.bfloat16)
    for ours, theirs in prefill_logits(llm, model):
        assert torch.cosine_similarity(ours, theirs, dim=0) > 0.999
    outputs = llm.generate(prompts(), SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True),
                           use_tqdm=False)
    assert [len(o["token_ids"]) for o in outputs] == [MAX_TOKENS] * len(PROMPT_LENS)
