"""No request waits for a Triton compile once the engine has started: prefill batches of every size class (1, a
multiple of 16, other), block tables of every width class, long and short prefills, greedy and sampled decoding."""
import pytest
import torch
from triton import knobs

from nanovllm import LLM, SamplingParams
from tests.nanovllm.test_models_hf import make_checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3")
    make_checkpoint(path, "qwen3")
    return str(path)


def test_requests_compile_nothing_after_start(path):
    # The KV cache is sized from GPU memory, as in serving: that run is the engine's long-prefill warm-up.
    llm = LLM(path, dtype=torch.bfloat16, max_model_len=512, max_num_seqs=32, max_num_batched_tokens=4096,
              gpu_memory_utilization=0.3, tuning_table=False)
    g = torch.Generator().manual_seed(2)
    # (prompts, tokens each): batch 1 with a 3-block table, 16 x 16 blocks (4096 tokens: the large tiles), 17 short.
    batches = [(1, 40), (16, 256), (17, 33)]
    compiled = []
    saved = knobs.runtime.jit_post_compile_hook
    knobs.runtime.jit_post_compile_hook = lambda *, fn, repr, **kwargs: compiled.append(repr)
    try:
        for (num_prompts, length), temperature in zip(batches, (0.0, 0.6, 1.0)):
            prompts = [torch.randint(1, 512, (length,), generator=g).tolist() for _ in range(num_prompts)]
            params = SamplingParams(temperature=temperature, max_tokens=3, ignore_eos=True)
            outputs = llm.generate(prompts, params, use_tqdm=False)
            assert [len(o["token_ids"]) for o in outputs] == [3] * num_prompts
    finally:
        knobs.runtime.jit_post_compile_hook = saved
    assert compiled == []
