"""The grid's compiled variant: the separate path with the model's forward under torch.compile gives the tokens of
the same path uncompiled (on the CPU: its torch reference ops, no CUDA graphs to capture)."""
import torch

from benchmarks.engine_runs import compile_model, engine_kwargs
from nanovllm import SamplingParams
from tests.nanovllm.test_models_hf import engine, make_checkpoint


def test_the_compiled_model_gives_the_tokens_of_the_uncompiled_one(tmp_path):
    make_checkpoint(tmp_path, "qwen3")
    greedy = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    prompt = [[3, 4, 5, 6, 7, 8, 9]]
    expected = [o["token_ids"] for o in engine(str(tmp_path), fused_norm_linear=False).generate(prompt, greedy)]
    kwargs = engine_kwargs("compiled", None)
    assert kwargs == {"fused_norm_linear": False, "enforce_eager": True}  # graphs only after compiling
    llm = engine(str(tmp_path), **kwargs)
    compile_model(llm)
    assert llm.model_runner.model._compiled_call_impl is not None
    assert [o["token_ids"] for o in llm.generate(prompt, greedy, use_tqdm=False)] == expected
    assert (llm.model_runner.graphs is not None) == torch.cuda.is_available()
