"""A decode step's inputs (one array per dtype, padded on the host for a CUDA graph) and the graphs that read them."""
import numpy as np
import pytest
import torch

from nanovllm import SamplingParams
from nanovllm.engine.cuda_graph import decode_arrays, decode_views
from nanovllm.engine.sequence import Sequence
from nanovllm.utils.context import reset_context
from tests.nanovllm.test_engine import prompts
from tests.nanovllm.test_models_hf import engine as make_engine
from tests.nanovllm.test_models_hf import make_checkpoint


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3")
    make_checkpoint(path, "qwen3")
    return str(path)


def seq(num_tokens: int, block_table: list[int]) -> Sequence:
    s = Sequence(list(range(100, 100 + num_tokens)))
    s.block_table = block_table
    return s


SEQS = [seq(6, [7, 3]), seq(1, [5]), seq(9, [2, 8, 4])]  # block size 4: tokens 6, 1 and 9 end in blocks 3, 5, 4


def test_graph_arrays_are_padded_on_the_host():
    i64, i32 = decode_arrays(SEQS, batch=4, block_size=4, width=5)
    assert (i64.dtype, i32.dtype) == (np.int64, np.int32)
    input_ids, positions, slots = i64.reshape(3, 4)
    assert input_ids.tolist() == [105, 100, 108, 0]
    assert positions.tolist() == [5, 0, 8, 0]
    assert slots.tolist() == [3 * 4 + 1, 5 * 4 + 0, 4 * 4 + 0, -1]  # padding: the KV-cache write skips slot -1
    seq_lens, tables = i32[:4], i32[4:].reshape(4, 5)
    assert seq_lens.tolist() == [6, 1, 9, 1]  # padding: one token of block 0
    assert tables.tolist() == [[7, 3, 0, 0, 0], [5, 0, 0, 0, 0], [2, 8, 4, 0, 0], [0] * 5]


def test_eager_arrays_have_no_padding_rows():
    i64, i32 = decode_arrays(SEQS, batch=3, block_size=4, width=3)
    assert i64.tolist() == [105, 100, 108, 5, 0, 8, 13, 20, 16]
    assert i32.tolist() == [6, 1, 9, 7, 3, 0, 5, 0, 0, 2, 8, 4]


def test_padding_only_arrays_write_nothing():
    i64, i32 = decode_arrays([], batch=2, block_size=16, width=3)
    assert i64.tolist() == [0, 0, 0, 0, -1, -1]
    assert i32.tolist() == [1, 1] + [0] * 6


@pytest.mark.parametrize("batch", [1, 4, 8])
def test_every_graph_reads_a_prefix_of_the_shared_buffers(batch):
    """A graph's views are its arrays, back to back from the start of buffers sized for the largest graph."""
    width = 5
    buffers = [torch.from_numpy(a) for a in decode_arrays([], 8, 4, width)]
    arrays = decode_arrays(SEQS[:batch], batch, 4, width)
    for buffer, array in zip(buffers, arrays):
        buffer[:array.size] = torch.from_numpy(array)
    input_ids, positions, context = decode_views(*buffers, batch, width)
    views = [input_ids, positions, context["slot_mapping"], context["seq_lens"], context["block_tables"]]
    assert [tuple(v.shape) for v in views] == [(batch,)] * 4 + [(batch, width)]
    assert all(v.is_contiguous() for v in views)
    for fields, buffer, array in [(views[:3], buffers[0], arrays[0]), (views[3:], buffers[1], arrays[1])]:
        offsets = [(v.data_ptr() - buffer.data_ptr()) // v.element_size() for v in fields]
        assert offsets == list(np.cumsum([0] + [v.numel() for v in fields[:-1]]))
        assert offsets[-1] + fields[-1].numel() == array.size
        assert torch.cat([v.flatten() for v in fields]).tolist() == array.tolist()


def decode_batch(engine, lens):
    """The engine's first decode batch after prefilling prompts of `lens` tokens."""
    for p in prompts(lens):
        engine.add_request(p, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    engine.step()
    seqs, is_prefill = engine.scheduler.schedule()
    assert not is_prefill
    return seqs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("lens", [(21,), (21, 9, 35), (21, 9, 35, 4, 50)])
def test_graph_logits_match_eager(path, lens):
    runner = (engine := make_engine(path)).model_runner
    seqs = decode_batch(engine, lens)
    with torch.inference_mode():
        graphed = runner.graphs.run(seqs).clone()
        reset_context()
        eager = runner._run_model(*runner._prepare_decode(seqs))
        reset_context()
    assert graphed.shape == eager.shape == (len(lens), engine.config.hf_config.vocab_size)
    torch.testing.assert_close(graphed, eager, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graph_step_is_one_copy_per_dtype_and_one_replay(path):
    runner = (engine := make_engine(path)).model_runner
    seqs = decode_batch(engine, (21, 9, 35))  # the graph of 4: one padding row
    with torch.inference_mode(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        runner.graphs.run(seqs)
        torch.cuda.synchronize()
    reset_context()
    names = [e.name for e in prof.events()]
    assert names.count("cudaMemcpyAsync") == 2
    assert names.count("cudaGraphLaunch") == 1
    assert not [n for n in names if "LaunchKernel" in n or "Memset" in n]
