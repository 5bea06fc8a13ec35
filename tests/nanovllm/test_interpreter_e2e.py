"""The runtime's own kernels end to end on the CPU: every op through its Triton kernel in the interpreter (paged
prefill and decode attention, the rotary + KV-cache write, RMSNorm, SiLU-and-mul), the fused sites with their row
statistics from the row-statistics kernel, and the plain linears' tuned GEMM handing the next norm its statistics;
greedy tokens equal to transformers'. The other CPU tests run the ops' references, so a bug in these kernels (a row
statistic of x instead of x + residual, say) would pass them."""
import dataclasses

import pytest
import torch

from kernels import ops
from kernels import row_stats
from nanovllm import SamplingParams
from tests.nanovllm.test_models_hf import engine, hf_greedy, make_checkpoint, prompts
from tests.tuning_tables import INTERPRETER_CONFIG, entry, table, write

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU runs these kernels in every test")

# The row statistics from their own kernel (not inside the K loop), so the fused sites launch it.
PROLOGUE = dataclasses.replace(INTERPRETER_CONFIG, SUMSQ_IN_LOOP=0)
PLAIN_GEMM = dataclasses.replace(INTERPRETER_CONFIG, BLOCK_N=64, BLOCK_K=128, SUMSQ_IN_LOOP=0)
STEPS = 8


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    return str(path), make_checkpoint(path, "llama")


def kernel_table(folder) -> str:
    """The tiny Llama's sites: QKV (64 -> 128) and gate/up (64 -> 256) fused, o_proj and down_proj (K = 64, 128 ->
    64) on the tuned GEMM, every batch size."""
    fused = [entry(64, n, {1: PROLOGUE}) for n in (128, 256)]
    linear = [entry(k, 64, {16: PLAIN_GEMM}) for k in (64, 128)]
    for e in linear:
        e["buckets"][0]["speedup"] = 1.1
    return write(table(fused, linear=linear), folder / "kernels.json")


def test_every_kernel_in_the_interpreter_gives_the_tokens_of_transformers(llama, tmp_path, monkeypatch):
    path, model = llama
    expected = [hf_greedy(model, p)[:STEPS] for p in prompts()]
    launched = {"row_stats": 0, "triton_ops": 0}
    stats = row_stats.launch_row_stats

    def counted_stats(*args, **kwargs):
        launched["row_stats"] += 1
        return stats(*args, **kwargs)

    def triton_everywhere(t: torch.Tensor) -> bool:
        launched["triton_ops"] += 1
        return True

    monkeypatch.setattr(ops, "use_triton", triton_everywhere)
    for module in ("kernels.gemm", "kernels.linear"):
        monkeypatch.setattr(f"{module}.launch_row_stats", counted_stats)
    llm = engine(path, tuning_table=kernel_table(tmp_path), max_num_batched_tokens=32)
    params = SamplingParams(temperature=0, max_tokens=STEPS, ignore_eos=True)
    outputs = llm.generate(prompts(), params, use_tqdm=False)
    assert [o["token_ids"] for o in outputs] == expected
    assert launched["row_stats"] > 0 and launched["triton_ops"] > 0
