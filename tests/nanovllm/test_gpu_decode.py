"""The path every benchmark runs, checked for correctness on a GPU: bf16, CUDA graphs, the Triton kernels and the
shipped table (tuned) against the separate RMSNorm + cuBLAS path (unfused), greedy, over many decode steps.

All three engines decode the same tokens: a float32 unfused engine runs free, and the two bf16 engines are fed its
token at every step while their logits are recorded, so every step compares logits of the same context. The bound is
what bf16 itself costs: at no step may the tuned engine stray from float32 by more than STRAY times what the
unfused bf16 engine strays at worst, and both pick float32's token wherever its two best logits are further apart
than twice their error (a closer pair is a near-tie that either may break either way).
"""
from __future__ import annotations

import pytest
import torch

from nanovllm import LLM, SamplingParams
from nanovllm.engine.sequence import Sequence
from nanovllm.utils.random_checkpoint import SHAPES, save_random_checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DECODE_STEPS = 64
PROMPT_LENS = (5, 37, 130, 611)
STRAY = 1.25
# llama-7b's shapes at 8 of its 32 layers (every site's (K, N), the table entries the full model reads); qwen3-0.6b
# whole.
MODELS = {"llama-7b": 8, "qwen3-0.6b": None}


@pytest.fixture(scope="module", params=list(MODELS))
def checkpoint(request, tmp_path_factory):
    config = SHAPES[request.param]()
    if MODELS[request.param]:
        config.num_hidden_layers = MODELS[request.param]
    path = str(tmp_path_factory.mktemp(request.param))
    save_random_checkpoint(path, config, torch.bfloat16)
    return path


def prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(11)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in PROMPT_LENS]


def engine(path: str, fused: bool, dtype: torch.dtype = torch.bfloat16) -> LLM:
    return LLM(path, dtype=dtype, max_model_len=1024, max_num_seqs=len(PROMPT_LENS), max_num_batched_tokens=2048,
               num_kvcache_blocks=512, fused_norm_linear=fused)


def recorded(llm: LLM, forced: dict[int, list[int]] | None) -> tuple[dict[int, list[int]], dict[int, list]]:
    """Generate DECODE_STEPS + 1 tokens of each prompt, recording each step's logits per request; with `forced`
    (request index -> tokens), emit those tokens instead of the argmax."""
    runner, sample = llm.model_runner, llm.model_runner._sample
    logits_of: dict[int, list[torch.Tensor]] = {}
    first = next(Sequence._ids) + 1  # the id of this call's first request

    def record(logits: torch.Tensor, seqs) -> torch.Tensor:
        tokens = sample(logits, seqs)
        for row, seq in enumerate(seqs):
            logits_of.setdefault(seq.seq_id - first, []).append(logits[row].float().clone())
        if forced is None:
            return tokens
        # A step's token is the request's next completion token (a step launched ahead counts its placeholder).
        return torch.tensor([forced[seq.seq_id - first][seq.num_completion_tokens] for seq in seqs],
                            device=tokens.device)

    runner._sample = record
    params = SamplingParams(temperature=0, max_tokens=DECODE_STEPS + 1, ignore_eos=True)
    try:
        outputs = llm.generate(prompts(llm.config.hf_config.vocab_size), params, use_tqdm=False)
    finally:
        runner._sample = sample
    return {i: o["token_ids"] for i, o in enumerate(outputs)}, logits_of


def run(path: str, fused: bool, dtype: torch.dtype, forced: dict[int, list[int]] | None):
    llm = engine(path, fused, dtype)
    assert llm.model_runner.graphs is not None
    if fused:
        qkv = llm.model_runner.model.model.layers[0].self_attn.qkv_proj
        assert all(launch is not None for launch in qkv.launches[1:len(PROMPT_LENS) + 1]), "decode did not fuse"
    out = recorded(llm, forced)
    del llm
    torch.cuda.empty_cache()
    return out


def test_tuned_decode_tracks_unfused_for_every_step(checkpoint):
    tokens, exact = run(checkpoint, False, torch.float32, None)
    _, unfused = run(checkpoint, False, torch.bfloat16, tokens)
    _, tuned = run(checkpoint, True, torch.bfloat16, tokens)
    worst = {"unfused": 0.0, "tuned": 0.0}
    compared = ties = 0
    for i, steps in exact.items():
        assert len(steps) == len(unfused[i]) == len(tuned[i]) == DECODE_STEPS + 1
        for k, ref in enumerate(steps):
            scale = ref.std().item()
            err = {name: (got[i][k] - ref).abs().max().item() / scale
                   for name, got in (("unfused", unfused), ("tuned", tuned))}
            worst = {name: max(worst[name], err[name]) for name in worst}
            top2 = ref.topk(2).values
            if (top2[0] - top2[1]).item() / scale <= 2 * max(err.values()):
                ties += 1
                continue
            compared += 1
            picks = (unfused[i][k].argmax().item(), tuned[i][k].argmax().item(), tokens[i][k])
            assert picks[0] == picks[1] == picks[2], f"request {i} step {k}: unfused, tuned, float32 {picks}"
    print(f"max |logits - float32| / std: unfused {worst['unfused']:.4f}, tuned {worst['tuned']:.4f}; "
          f"{compared} steps compared, {ties} near-ties")
    assert worst["tuned"] <= STRAY * worst["unfused"]
    assert compared >= DECODE_STEPS
