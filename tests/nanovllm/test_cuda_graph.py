"""A decode step's inputs (one array per dtype, padded on the host for a CUDA graph) and the graphs that read them."""
import multiprocessing
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from nanovllm import SamplingParams
from nanovllm.engine.cuda_graph import DecodeGraphs, decode_arrays, decode_views
from nanovllm.engine.model_runner import ModelRunner
from nanovllm.engine.sequence import Sequence
from nanovllm.utils.context import get_context, reset_context
from tests.nanovllm.test_engine import prompts
from tests.nanovllm.test_models_hf import engine as make_engine
from tests.nanovllm.test_models_hf import make_checkpoint
from tests.search_spaces.test_attention_space import _entry
from tests.tuning_tables import table, write
from tuning_table import parse_table
from tuning_table.attention import AttentionTiles


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


class FakeGraph:
    """torch.cuda.CUDAGraph without a GPU: counts its replays."""

    def __init__(self):
        self.replays = 0

    def pool(self) -> str:
        return "pool"

    def replay(self) -> None:
        self.replays += 1


class FakeEvent:
    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


class ShapeRecorder(nn.Module):
    """A model that records the block table's shape of each forward pass."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size, self.shapes = vocab_size, []

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(get_context().block_tables.shape))
        return input_ids

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(hidden), self.vocab_size)


@pytest.fixture
def fake_cuda(monkeypatch) -> list:
    """DecodeGraphs on the CPU: graphs that capture nothing, no pinned memory; returns the pools captures were given."""
    pools = []

    @contextmanager
    def graph(cuda_graph, pool=None):
        pools.append(pool)
        yield

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    return pools


def test_a_step_replays_the_graph_of_its_batch_and_narrowest_width(fake_cuda):
    model = ShapeRecorder(vocab_size=10)
    widths = {1: [2, 5, 8], 2: [2, 8], 4: [8]}
    graphs = DecodeGraphs(model, 4, 4, widths.__getitem__, 10, torch.device("cpu"))
    # Largest first, by batch then width, each a warm-up pass and the captured one; all in the first graph's pool.
    captured = [(4, 8), (2, 8), (2, 2), (1, 8), (1, 5), (1, 2)]
    assert model.shapes == [shape for shape in captured for _ in range(2)]
    assert fake_cuda == [None] + ["pool"] * 5
    assert [b.numel() for b in graphs.device_buffers] == [3 * 4, 4 * (1 + 8)]
    # SEQS hold 2, 1 and 3 blocks.
    for seqs, (batch, width) in [(SEQS[:1], (1, 2)), (SEQS[2:], (1, 5)), (SEQS[:2], (2, 2)), (SEQS[1:], (2, 8)),
                                 (SEQS, (4, 8))]:
        arrays = graphs.arrays(seqs)
        assert [a.tolist() for a in arrays] == [a.tolist() for a in decode_arrays(seqs, batch, 4, width)]
        before = {key: g.replays for key, g in graphs.graphs.items()}
        assert graphs.replay(arrays, len(seqs)).shape == (len(seqs), 10)
        assert [key for key, g in graphs.graphs.items() if g.replays > before[key]] == [(batch, width)]
        # What the replayed graph reads: its arrays from the start of the shared buffers.
        assert [b[:a.size].tolist() for b, a in zip(graphs.device_buffers, arrays)] == [a.tolist() for a in arrays]


def decode_tiles(contexts: dict[str, tuple[int, int]]) -> list[AttentionTiles]:
    """Tiles of two shapes (full attention, a 32-key window), each with BLOCK_N 16 at batch 1 up to its first
    context and 32 up to its second, by form ("" or "window=32")."""
    tile = [dict(BLOCK_N=n, num_warps=1, num_stages=1, num_splits=1) for n in (16, 32)]
    data = table([])
    data["kernels"]["attention_decode"] = [
        {**_entry("attention_decode", [(dict(batch=1, context=ctx), t) for ctx, t in zip(pair, tile)]),
         "form": form} for form, pair in contexts.items()]
    t = parse_table(data)
    return [AttentionTiles(t, 4, 2, 16, torch.float16), AttentionTiles(t, 4, 2, 16, torch.float16, 32)]


def test_the_runner_captures_the_widths_of_every_attention_shape():
    full, windowed = decode_tiles({"": (64, 256), "window=32": (128, 256)})
    assert (full.decode_widths(1, 16, 16), windowed.decode_widths(1, 16, 16)) == ([4, 16], [8, 16])
    runner = SimpleNamespace(attention_tiles=[full, windowed], max_blocks_per_seq=16, block_size=16, world_size=1)
    assert ModelRunner._graph_widths(runner, 1) == [4, 8, 16]


def rank_widths(rank: int, store: str, contexts: tuple[int, int], out) -> None:
    """One rank of a gloo group whose table tunes full attention at `contexts` (its card's table)."""
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    try:
        runner = SimpleNamespace(attention_tiles=decode_tiles({"": contexts})[:1], max_blocks_per_seq=16,
                                 block_size=16, world_size=2)
        out.put((rank, ModelRunner._graph_widths(runner, 1)))
    finally:
        dist.destroy_process_group()


def test_ranks_reading_different_tables_capture_the_same_widths(tmp_path):
    """Tensor-parallel ranks on different cards: each rank's tile changes are kept, and every rank captures (and
    replays) the same graphs, so that their collectives pair up."""
    spawn = multiprocessing.get_context("spawn")
    out = spawn.Queue()
    ranks = [spawn.Process(target=rank_widths, args=(rank, str(tmp_path / "store"), contexts, out))
             for rank, contexts in enumerate([(64, 256), (128, 256)])]
    for p in ranks:
        p.start()
    try:
        found = dict(out.get(timeout=120) for _ in ranks)
    finally:
        for p in ranks:
            p.join(30)
            p.kill()
    assert found == {0: [4, 8, 16], 1: [4, 8, 16]}


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
@pytest.mark.parametrize("lens, width", [((21,), 2), ((21, 9, 35), 4), ((70,), 8)])
def test_graphs_narrower_than_max_model_len_match_eager(path, tmp_path, lens, width):
    """Contexts 32, 64 and 128 tuned to three tiles: with blocks of 16 up to max_model_len 128, every graph batch is
    captured at 2, 4 and 8 blocks, and a step of 2, 3 or 5 blocks runs in the narrowest that holds it."""
    tiles = [dict(BLOCK_N=n, num_warps=w, num_stages=1, num_splits=s) for n, w, s in ((16, 1, 1), (16, 2, 2),
                                                                                       (32, 4, 2))]
    data = table([])
    data["kernels"]["attention_decode"] = [{
        **_entry("attention_decode", [(dict(batch=1, context=c), t) for c, t in zip((32, 64, 128), tiles)]),
        "dims": {"q_heads": 4, "kv_heads": 2, "head_dim": 32}, "dtype": "float32"}]  # the qwen3 checkpoint's
    runner = (engine := make_engine(path, tuning_table=write(data, tmp_path / "attention.json"))).model_runner
    assert set(runner.graphs.graphs) == {(b, w) for b in (1, 2, 4, 8) for w in (2, 4, 8)}
    seqs = decode_batch(engine, lens)
    batch = runner.graphs._batch(len(seqs))
    assert runner.graphs.arrays(seqs)[1].size == batch * (1 + width)
    with torch.inference_mode():
        graphed = runner.graphs.run(seqs).clone()
        reset_context()
        eager = runner._run_model(*runner._prepare_decode(seqs))
        reset_context()
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
