"""CUDA graphs of the decode step, and the layout of a decode step's inputs.

A decode step's inputs are two flat arrays, one per dtype, so that each reaches the GPU in one copy:
int64 [input_ids | positions | slot_mapping] and int32 [seq_lens | block_tables, row-major], every field
`batch` rows long. The eager path uploads them as they are; a graph's are padded on the host to its batch size and
its block table's width.
"""
from bisect import bisect_left
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from nanovllm.engine.sequence import Sequence
from nanovllm.utils.context import reset_context, set_context

GRAPH_BATCH_SIZES = [1, 2, 4, 8] + list(range(16, 513, 16))


def decode_arrays(seqs: list[Sequence], batch: int, block_size: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The int64 and int32 arrays of a decode step of `seqs`, padded to `batch` rows of `width` table entries.

    Padding rows: token 0 at position 0, slot -1 (the KV-cache write skips it), seq_len 1 and block table 0 (the
    row reads one finite token of block 0, and its output is dropped). Table entries past a sequence's blocks are 0.
    """
    n = len(seqs)
    i64 = np.zeros(3 * batch, dtype=np.int64)
    i32 = np.zeros(batch * (1 + width), dtype=np.int32)
    input_ids, positions, slots = i64.reshape(3, batch)
    seq_lens, tables = i32[:batch], i32[batch:].reshape(batch, width)
    last = [len(seq) - 1 for seq in seqs]
    input_ids[:n] = [seq.last_token for seq in seqs]
    positions[:n] = last
    slots[:n] = [seq.block_table[p // block_size] * block_size + p % block_size for seq, p in zip(seqs, last)]
    slots[n:] = -1
    seq_lens[:n] = positions[:n] + 1
    seq_lens[n:] = 1
    for row, seq in zip(tables, seqs):
        row[:len(seq.block_table)] = seq.block_table
    return i64, i32


def decode_views(i64: torch.Tensor, i32: torch.Tensor, batch: int,
                 width: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """input_ids, positions and the context's tensors, as views of flat tensors that begin with decode_arrays'."""
    input_ids, positions, slot_mapping = i64[:3 * batch].view(3, batch)
    context = {"slot_mapping": slot_mapping, "seq_lens": i32[:batch],
               "block_tables": i32[batch:batch * (1 + width)].view(batch, width)}
    return input_ids, positions, context


def largest_graph_batch(max_num_seqs: int) -> int:
    return next(b for b in GRAPH_BATCH_SIZES if b >= min(max_num_seqs, GRAPH_BATCH_SIZES[-1]))


def logits_bytes(max_num_seqs: int, vocab_size: int, dtype: torch.dtype) -> int:
    """GPU memory the graphs hold for logits, to leave out of the KV cache: the float32 output buffer, and in the
    graphs' pool the LM head's output and its float32 copy, at the largest graph's batch."""
    return largest_graph_batch(max_num_seqs) * vocab_size * (4 + dtype.itemsize + 4)


class DecodeGraphs:
    """CUDA graphs of the decode step, LM head included: per batch size up to `max_num_seqs` (at most 512), one per
    block-table width of `widths(batch)` (ascending, the last the full table of max_model_len). The attention
    tile is fixed at capture by the batch and the table's width (tuning_table/attention.py), so a graph narrower than
    the full table runs shorter contexts with the tile tuned for them; a step runs in the graph of its batch and the
    narrowest width that holds its longest block table. With several tensor-parallel ranks each rank captures its
    own, collectives included, in step with the others, and only rank 0's return logits (`vocab_size` None on the
    others).

    Every graph reads its inputs from the same two device buffers, one per dtype, its decode_arrays packed from
    offset 0: a step's inputs reach the graph in one copy per dtype out of a pinned staging buffer, with no
    padding or scatter kernels, and the buffers are the size of the largest graph's arrays rather than the sum
    over all graphs. Sharing is safe because replays run one at a time on one stream and each step's copy
    rewrites everything its graph reads. All graphs share one memory pool too, captured largest first.
    """

    def __init__(self, model: nn.Module, max_num_seqs: int, block_size: int, widths: Callable[[int], list[int]],
                 vocab_size: int | None, device: torch.device):
        largest = largest_graph_batch(max_num_seqs)
        self.batch_sizes = [b for b in GRAPH_BATCH_SIZES if b <= largest]
        self.widths = {batch: widths(batch) for batch in self.batch_sizes}
        self.max_batch, self.block_size = largest, block_size
        # Sized for the largest batch at the widest table, so that every graph's arrays fit from offset 0.
        width = max(w[-1] for w in self.widths.values())
        # Made outside inference mode, so that run() may write into them from anywhere.
        self.host_buffers = [torch.from_numpy(a).pin_memory() for a in decode_arrays([], largest, block_size, width)]
        self.device_buffers = [torch.empty_like(host, device=device) for host in self.host_buffers]
        self.logits = None if vocab_size is None else torch.empty(largest, vocab_size, dtype=torch.float32,
                                                                   device=device)  # ParallelLMHead's dtype
        # Marks the end of the last copies out of the staging buffers, which the next step overwrites.
        self.copied = torch.cuda.Event()
        # Keyed by (batch, width).
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.copies: dict[tuple[int, int], list] = {}  # per graph: (host array, host tensor, device tensor) per dtype
        self._capture(model)

    def run(self, seqs: list[Sequence], previous: torch.Tensor | None = None) -> torch.Tensor | None:
        """Logits [len(seqs), vocab] of a decode step; a view that the next replay overwrites.
        previous: device tokens that replace the seqs' (placeholder) last tokens (ModelRunner.launch)."""
        return self.replay(self.arrays(seqs), len(seqs), previous)

    def arrays(self, seqs: list[Sequence]) -> tuple[np.ndarray, np.ndarray]:
        """The decode_arrays of `seqs`, padded to the batch and width of the graph that runs them."""
        batch = self._batch(len(seqs))
        widths = self.widths[batch]
        width = widths[bisect_left(widths, max(len(seq.block_table) for seq in seqs))]
        return decode_arrays(seqs, batch, self.block_size, width)

    def replay(self, arrays: tuple[np.ndarray, np.ndarray], num_seqs: int,
               previous: torch.Tensor | None = None) -> torch.Tensor | None:
        """`run` of the graph's arrays (what rank 0 sends the other ranks); None where this rank has no logits."""
        batch = self._batch(num_seqs)
        key = (batch, arrays[1].size // batch - 1)  # the int32 array: seq_lens, then the block table's batch rows
        self._upload(self.copies[key], arrays)
        if previous is not None:
            self.device_buffers[0][:num_seqs].copy_(previous)  # input_ids lead the int64 buffer
        self.graphs[key].replay()  # reads the views it was captured with, not the Python context
        return self.logits[:num_seqs] if self.logits is not None else None

    def _batch(self, num_seqs: int) -> int:
        return self.batch_sizes[bisect_left(self.batch_sizes, num_seqs)]

    def _upload(self, copies: list, arrays: tuple[np.ndarray, np.ndarray]) -> None:
        # A non_blocking copy reads the pinned buffer when the stream reaches it, so the host must not rewrite the
        # buffer before the last step's copies ran. With a step launched ahead (LLMEngine.step) the previous
        # replay may still be queued; this waits for its copies, which come before it on the stream.
        self.copied.synchronize()
        for (host_array, host, dev), array in zip(copies, arrays):
            host_array[:] = array
            dev.copy_(host, non_blocking=True)
        self.copied.record()

    @torch.inference_mode()
    def _capture(self, model: nn.Module) -> None:
        pool = None
        # Largest first: the smaller graphs then fit in the memory pool the largest leaves.
        for batch in reversed(self.batch_sizes):
            for width in reversed(self.widths[batch]):
                pool = self._capture_one(model, batch, width, pool)

    def _capture_one(self, model: nn.Module, batch: int, width: int, pool: tuple | None) -> tuple:
        """Captures the graph of (batch, width) into `pool` (None: a new one); returns the pool."""
        padding = decode_arrays([], batch, self.block_size, width)
        copies = [(host[:a.size].numpy(), host[:a.size], dev[:a.size])
                  for a, host, dev in zip(padding, self.host_buffers, self.device_buffers)]
        input_ids, positions, context = decode_views(*self.device_buffers, batch, width)
        self.copies[batch, width] = copies
        self._upload(copies, padding)  # the warm-up run below then writes nothing into the KV cache
        set_context(is_prefill=False, **context)
        self._forward(model, batch, input_ids, positions)  # compiles the kernels
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool):
            self._forward(model, batch, input_ids, positions)
        self.graphs[batch, width] = graph
        torch.cuda.synchronize()
        reset_context()
        return graph.pool()

    def _forward(self, model: nn.Module, batch: int, input_ids: torch.Tensor, positions: torch.Tensor) -> None:
        logits = model.compute_logits(model(input_ids, positions))
        if self.logits is not None:
            self.logits[:batch] = logits
