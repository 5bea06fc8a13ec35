"""Randomly initialised checkpoints of known model shapes, built locally (no network) for demos and benchmarks."""
import json
import os
import shutil
import tempfile

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig, PretrainedConfig, PreTrainedTokenizerFast,
                          Qwen3Config)

# Text for training the demo tokenizer; any text works, it only has to cover common English.
TOKENIZER_TEXT = """
The quick brown fox jumps over the lazy dog. A paged key-value cache splits each sequence into blocks of
sixteen tokens, so that memory is handed out as it is needed and blocks with the same prefix can be shared.
Continuous batching lets new requests join the running batch at every step instead of waiting for the slowest.
Once upon a time there was a small language model that answered every question with random words, because
nobody had trained it yet. It was happy anyway, and it generated tokens very quickly on the graphics card.
What is the capital of France? Paris is the capital of France. How many legs does a spider have? Eight.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: , . ; : ! ? ' " ( ) [ ] { } - + = * / \\ _ # @ & %.
"""
EOS_TOKEN = "<|endoftext|>"

SHAPES = {
    "tiny-qwen3": lambda: Qwen3Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=True),
    "qwen3-0.6b": lambda: Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True),
    "llama-7b": lambda: LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "llama-13b": lambda: LlamaConfig(
        vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
        num_key_value_heads=40, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
    # Mistral-7B-v0.1: grouped-query attention (8 KV heads) and a 4096-token sliding window.
    "mistral-7b": lambda: MistralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=10000.0,
        sliding_window=4096, tie_word_embeddings=False),
}


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on TOKENIZER_TEXT: it encodes any string, the eos token is id 0."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # No progress bar: without a terminal it prints bare newlines into the stdout of the command that built it.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TOKENIZER_TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN)


def save_random_checkpoint(path: str, config: PretrainedConfig, dtype: torch.dtype, seed: int = 0) -> None:
    """Write config, tokenizer and N(0, 0.02) weights (norm gains 1) as sharded safetensors into `path`."""
    config.architectures = [config.architectures[0] if config.architectures else
                            {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM",
                             "mistral": "MistralForCausalLM"}[config.model_type]]
    config.dtype = dtype
    config.eos_token_id = config.bos_token_id = 0
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in AutoModelForCausalLM.from_config(config).state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    # Drawn on the GPU when there is one: a 7B checkpoint takes seconds there instead of minutes.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device).manual_seed(seed)
    weight_map, shard, shard_bytes, shard_id = {}, {}, 0, 0
    os.makedirs(path, exist_ok=True)

    def flush() -> None:
        nonlocal shard, shard_bytes, shard_id
        shard_id += 1
        file = f"model-{shard_id:05d}.safetensors"
        save_file(shard, os.path.join(path, file), metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
        shard, shard_bytes = {}, 0

    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(shape, dtype=dtype)
        else:
            tensor = (torch.randn(shape, generator=generator, device=device) * 0.02).to(dtype).cpu()
        shard[name] = tensor
        shard_bytes += tensor.numel() * tensor.element_size()
        if shard_bytes >= 2 << 30:
            flush()
    if shard:
        flush()
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
    config.save_pretrained(path)
    build_tokenizer().save_pretrained(path)


def cached_random_checkpoint(shape: str, dtype: torch.dtype = torch.bfloat16) -> str:
    """Path of a random checkpoint of `shape` (a key of SHAPES), built on first use under ~/.cache/nanovllm."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {shape!r}")
    cache_dir = os.environ.get("NANOVLLM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "nanovllm"))
    path = os.path.join(cache_dir, f"random-{shape}-{str(dtype).removeprefix('torch.')}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=cache_dir)
        save_random_checkpoint(tmp, SHAPES[shape](), dtype)
        shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp, path)
    return path
