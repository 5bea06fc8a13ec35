"""The model runner: builds the model (a rank's shard of it) and its KV cache, picks each site's kernels from the
tuning table, runs a step; and the process of a tensor-parallel rank other than 0 (run_worker)."""
import logging
import os
import signal
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from nanovllm.config import Config
from nanovllm.engine.cuda_graph import DecodeGraphs, decode_arrays, decode_views, logits_bytes
from nanovllm.engine.sequence import Sequence
from nanovllm.engine.tensor_parallel import Driver, Workers
from nanovllm.layers.attention import Attention
from nanovllm.layers.fused_norm_linear import fuse_norm_linear
from nanovllm.layers.sampler import Sampler
from nanovllm.models import MODEL_REGISTRY
from nanovllm.utils.context import reset_context, set_context
from nanovllm.utils.loader import load_model
from nanovllm.utils.parallel import tensor_parallel_shard
from kernels.epilogue import PLAIN
from tuning_table import open_table, select_configs
from tuning_table.attention import AttentionTiles
from tuning_table.format import dtype_name

logger = logging.getLogger(__name__)
# The CPU KV cache takes at most this share of the available RAM.
CPU_KV_CACHE_RAM_FRACTION = 0.25
# Bytes: the pointer alignment Triton specializes kernels on.
UPLOAD_ALIGNMENT = 16


class Step(NamedTuple):
    """A forward pass's inputs as host arrays, made once on rank 0 and sent as they are to the other tensor-parallel
    ranks: `kind` "prefill" (ModelRunner._prefill_arrays), "decode" (decode_arrays of an eager step) or "graph" (a
    CUDA graph's, padded to its batch and block-table width, which pick the graph), of `num_seqs` sequences."""
    kind: str
    arrays: tuple[np.ndarray, ...]
    num_seqs: int


class ModelRunner:
    """Owns the model (this rank's shard of it) and its paged KV cache; turns scheduled sequences into one forward pass
    and sampled tokens.

    KV cache size: `num_kvcache_blocks` when given; on CUDA, what fits in `gpu_memory_utilization` of the GPU's
    memory after the weights and the activations of a warm-up prefill of `max_num_batched_tokens` tokens; on CPU,
    room for `max_num_seqs` sequences of `max_model_len` tokens, capped at a quarter of the available RAM; with
    several ranks, the least of theirs.

    Tensor parallelism (nanovllm/engine/tensor_parallel.py): rank 0 (driver None) spawns the other ranks, which run
    this class too (run_worker), each on its own shard; they load at the same time, join the process group, and then
    size the cache and capture their CUDA graphs in step with each other, as their collectives require. Rank 0 then
    sends each step's inputs to the others before it runs the step itself, and alone samples.
    """

    def __init__(self, config: Config, driver: Driver | None = None):
        self.config = config
        self.rank = driver.rank if driver is not None else 0
        self.world_size = config.tensor_parallel_size
        self.device, self.dtype = config.device, config.dtype
        if self.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.rank)
            torch.cuda.set_device(self.device)
        self.block_size = config.kvcache_block_size
        self.max_blocks_per_seq = -(-config.max_model_len // self.block_size)
        self.workers: Workers | None = None
        # Spawned first, so that they load their shards while this rank loads its own.
        workers = Workers(config, run_worker) if self.world_size > 1 and driver is None else None
        try:
            self._load(workers or driver)
        except BaseException as e:
            if workers is None:
                raise
            if not workers.joined:  # no collective has run: the error is this rank's own
                workers.close(orderly=False)
                raise
            raise workers.fail(e, "While starting") from None
        self.workers = workers

    def _load(self, peers: Workers | Driver | None) -> None:
        config, hf_config = self.config, self.config.hf_config
        arch = next(a for a in hf_config.architectures if a in MODEL_REGISTRY)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with self.device, tensor_parallel_shard(self.rank, self.world_size):
                self.model = MODEL_REGISTRY[arch](hf_config, config.max_model_len)
        finally:
            torch.set_default_dtype(default_dtype)
        load_model(self.model, config.model)
        if peers is not None:
            peers.join(self.device)
        # The table configures the tuned kernels; without the fused kernel every kernel runs its defaults.
        path, table = open_table(config.tuning_table, self.device, config.named_table) if config.fused_norm_linear \
            else (None, None)
        if config.fused_norm_linear:
            self._fuse_norm_linear(path, table)
        self.sampler = Sampler()
        self.attention_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self._pick_attention_tiles(table)
        self.graphs: DecodeGraphs | None = None
        self.num_kvcache_blocks = self._num_kvcache_blocks()
        if self.world_size > 1:  # the ranks' shards are alike, their free memory need not be
            blocks = torch.tensor([self.num_kvcache_blocks], device=self.device)
            dist.all_reduce(blocks, dist.ReduceOp.MIN)
            self.num_kvcache_blocks = int(blocks.item())
        if self.num_kvcache_blocks < self.max_blocks_per_seq:
            raise ValueError(
                f"the KV cache holds {self.num_kvcache_blocks} blocks of {self.block_size} tokens, but one sequence of "
                f"max_model_len={config.max_model_len} tokens needs {self.max_blocks_per_seq}; lower max_model_len or "
                "give the cache more room (gpu_memory_utilization, num_kvcache_blocks)")
        self._bind_kv_cache(self.num_kvcache_blocks)
        if self.device.type == "cuda":
            # The sizing run above compiled the kernels of a long prefill; this compiles a short one's (the prefill
            # attention takes smaller tiles there), so that no request waits for a compile. It writes K/V into
            # blocks no sequence holds yet.
            self._warmup(1, min(self.block_size, config.max_model_len))
        if self.device.type == "cuda" and not config.enforce_eager:
            self.graphs = self.capture_graphs()
        if isinstance(peers, Workers):
            peers.wait("ready")

    def _pick_attention_tiles(self, table) -> None:
        """Each attention layer reads its tiles from the table's entries of its shape (one resolver per shape, so
        that the layers share what it resolved); a CUDA graph captures the ones of its batch and width."""
        tiles = {}
        for layer in self.attention_layers:
            shape = (layer.num_heads, layer.num_kv_heads, layer.head_dim, layer.sliding_window)
            if shape not in tiles:
                tiles[shape] = AttentionTiles(table, *shape[:3], self.dtype, shape[3])
                logger.info("attention %s: tuned tiles %s", shape, tiles[shape].covered() if table else "none")
            layer.tiles = tiles[shape]
        self.attention_tiles = list(tiles.values())

    def capture_graphs(self) -> DecodeGraphs:
        """The decode step's CUDA graphs of the model as it is now (benchmarks/engine_runs.py captures them again
        after compiling it)."""
        vocab_size = self.config.hf_config.vocab_size if self.rank == 0 else None
        return DecodeGraphs(self.model, self.config.max_num_seqs, self.block_size, self._graph_widths, vocab_size,
                            self.device)

    def _graph_widths(self, batch: int) -> list[int]:
        """The block-table widths of the decode graphs of `batch` rows: every attention shape's, so that each shape
        runs a step with the tile it would pick from its own widths; with several ranks, every rank's. The ranks
        must capture and replay the same graphs for their collectives to pair up, and ranks on different cards read
        different tables."""
        widths = set().union(*(tiles.decode_widths(batch, self.max_blocks_per_seq, self.block_size)
                               for tiles in self.attention_tiles))
        if self.world_size > 1:
            ranks: list[set[int] | None] = [None] * self.world_size
            dist.all_gather_object(ranks, widths)
            widths = set().union(*ranks)
        return sorted(widths)

    def _fuse_norm_linear(self, path, table) -> None:
        """Every fused site and plain linear gets its launches per M from the tuning table (tuning_table's selection
        rule), resolved once here so that a forward pass (and the CUDA graphs captured from it) only indexes a
        list."""
        # The most rows one forward pass can have: a prefill step, an eager decode batch or a CUDA-graph batch.
        max_m = max(self.config.max_num_batched_tokens, self.config.max_num_seqs, 512)
        source = f"tuning table {path}"
        selected = {}

        def launches(kernel, linear, epilogue):
            K, N = linear.weight.shape[1], linear.weight.shape[0]
            key = (kernel, K, N, epilogue)
            if key not in selected:
                selected[key] = select_configs(table, kernel, K, N, self.dtype, epilogue, self.device, max_m,
                                               self.config.fusion, source)
            return selected[key]

        for norm, linear, epilogue in self.model.norm_linear_sites():
            fuse_norm_linear(norm, linear, launches("rms_norm_linear", linear, epilogue))
        # o_proj and down_proj: the norm-free tuned GEMM where the table's "linear" entries say it beat cuBLAS.
        for linear in self.model.plain_linears():
            linear.launches = launches("linear", linear, PLAIN)
        self._log_coverage(path, table, selected)

    def _log_coverage(self, path, table, selected) -> None:
        dtype = dtype_name(self.dtype)
        where = f"tuning table {path} ({table.gpu}, torch {table.torch}, triton {table.triton})" if table else \
            "no tuning table"
        for kernel in ("rms_norm_linear", "linear"):
            shapes = sorted({(K, N) for k, K, N, _ in selected if k == kernel})
            missing = [s for s in shapes if table is None or table.largest_bucket(kernel, *s, self.dtype) is None]
            logger.info("%s: %s covers %d of the model's %d %s shapes", kernel, where, len(shapes) - len(missing),
                        len(shapes), dtype)
            if table is not None and missing and kernel == "rms_norm_linear":
                warnings.warn(f"tuning table {path} has no {dtype} configs for (K, N) {missing}: those run the "
                              "learned fallback's configs", stacklevel=3)

    def _block_bytes(self) -> int:
        attn = self.attention_layers[0]
        per_token = 2 * len(self.attention_layers) * attn.num_kv_heads * attn.head_dim * self.dtype.itemsize
        return self.block_size * per_token

    def _bind_kv_cache(self, num_blocks: int) -> None:
        attn = self.attention_layers[0]
        self.kv_cache = None  # frees the previous cache before allocating the new one
        self.kv_cache = torch.zeros(2, len(self.attention_layers), num_blocks, self.block_size, attn.num_kv_heads,
                                    attn.head_dim, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(self.attention_layers):
            layer.k_cache, layer.v_cache = self.kv_cache[0, i], self.kv_cache[1, i]

    def _num_kvcache_blocks(self) -> int:
        config = self.config
        if config.num_kvcache_blocks is not None:
            return config.num_kvcache_blocks
        if self.device.type == "cpu":
            wanted = config.max_num_seqs * self.max_blocks_per_seq
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            return min(wanted, int(available * CPU_KV_CACHE_RAM_FRACTION) // self._block_bytes())
        seq_len = min(config.max_model_len, config.max_num_batched_tokens)
        num_seqs = max(1, min(config.max_num_batched_tokens // seq_len, config.max_num_seqs))
        self._bind_kv_cache(num_seqs * self.max_blocks_per_seq)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        self._warmup(num_seqs, seq_len)
        activations = torch.cuda.max_memory_allocated() - before
        self.kv_cache = None
        for layer in self.attention_layers:
            layer.k_cache = layer.v_cache = torch.tensor([])
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        budget = total * config.gpu_memory_utilization - (total - free) - activations
        if not config.enforce_eager:
            budget -= logits_bytes(config.max_num_seqs, config.hf_config.vocab_size, self.dtype)
        return max(0, int(budget) // self._block_bytes())

    def _warmup(self, num_seqs: int, seq_len: int) -> None:
        seqs = [Sequence([0] * seq_len) for _ in range(num_seqs)]
        for i, seq in enumerate(seqs):
            seq.block_table = list(range(i * seq.num_blocks, (i + 1) * seq.num_blocks))
            seq.num_scheduled_tokens = seq_len
        self.launch(seqs, is_prefill=True).token_ids()  # waits for it

    def _upload(self, dtype: torch.dtype, *arrays) -> list[torch.Tensor]:
        """The arrays on the device, through one host-to-device copy: a step's metadata is a handful of short
        arrays, and each separate copy costs a pinned allocation and a copy launch while the GPU waits."""
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        host = [np.asarray(a, dtype=np_dtype) for a in arrays]
        # Each array starts on a 16-byte boundary: Triton compiles a kernel per alignment class of its pointers, and
        # packed back to back the arrays' offsets would change class with the batch (seconds of compiling each).
        align = UPLOAD_ALIGNMENT // np_dtype.itemsize
        starts = np.cumsum([0] + [-(-a.size // align) * align for a in host])
        flat = np.zeros(starts[-1], dtype=np_dtype)
        for a, start in zip(host, starts):
            flat[start:start + a.size] = a.ravel()
        flat = torch.from_numpy(flat)
        if self.device.type == "cuda":
            flat = flat.pin_memory().to(self.device, non_blocking=True)
        return [flat[start:start + a.size].view(a.shape) for a, start in zip(host, starts)]

    @staticmethod
    def _block_tables(seqs: list[Sequence]) -> np.ndarray:
        width = max(len(seq.block_table) for seq in seqs)
        tables = np.full((len(seqs), width), -1, dtype=np.int32)
        for i, seq in enumerate(seqs):
            tables[i, :len(seq.block_table)] = seq.block_table
        return tables

    def _prefill_arrays(self, seqs: list[Sequence]) -> tuple[np.ndarray, ...]:
        """int32 cu_seqlens_q, seq_lens, block_tables and int64 input_ids, positions, slot_mapping, logits_indices."""
        input_ids, positions, slots, cu_seqlens_q, seq_lens, logits_indices = [], [], [], [0], [], []
        for seq in seqs:
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + seq.num_scheduled_tokens
            pos = np.arange(start, end)
            input_ids.extend(seq[start:end])
            positions.append(pos)
            slots.append(np.asarray(seq.block_table)[pos // self.block_size] * self.block_size + pos % self.block_size)
            cu_seqlens_q.append(cu_seqlens_q[-1] + end - start)
            seq_lens.append(end)
            if end == len(seq):
                logits_indices.append(cu_seqlens_q[-1] - 1)
        i32 = [np.asarray(a, dtype=np.int32) for a in (cu_seqlens_q, seq_lens, self._block_tables(seqs))]
        i64 = [np.asarray(a, dtype=np.int64) for a in (input_ids, np.concatenate(positions), np.concatenate(slots),
                                                        logits_indices)]
        return (*i32, *i64)

    def _prefill_inputs(self, arrays: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        cu_seqlens_q, seq_lens, block_tables = self._upload(torch.int32, *arrays[:3])
        input_ids, positions, slot_mapping, logits_indices = self._upload(torch.int64, *arrays[3:])
        set_context(is_prefill=True, cu_seqlens_q=cu_seqlens_q, seq_lens=seq_lens, slot_mapping=slot_mapping,
                    block_tables=block_tables, logits_indices=logits_indices)
        return input_ids, positions

    def _decode_inputs(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        i64, i32 = step.arrays
        width = i32.size // step.num_seqs - 1
        (i64,), (i32,) = self._upload(torch.int64, i64), self._upload(torch.int32, i32)
        input_ids, positions, context = decode_views(i64, i32, step.num_seqs, width)
        set_context(is_prefill=False, **context)
        return input_ids, positions

    def _decode_step(self, seqs: list[Sequence]) -> Step:
        if self.graphs is not None and len(seqs) <= self.graphs.max_batch:
            return Step("graph", self.graphs.arrays(seqs), len(seqs))
        width = max(len(seq.block_table) for seq in seqs)
        return Step("decode", decode_arrays(seqs, len(seqs), self.block_size, width), len(seqs))

    def _prepare_decode(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(seq.block_table) for seq in seqs)
        return self._decode_inputs(Step("decode", decode_arrays(seqs, len(seqs), self.block_size, width), len(seqs)))

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        params = [seq.sampling_params for seq in seqs]
        # All greedy (the benchmarks, checks against HF): one argmax, nothing uploaded, no noise drawn.
        if all(p.temperature == 0 for p in params):
            return logits.argmax(dim=-1)
        for seq in seqs:
            if seq.sampling_params.seed is not None and seq.generator is None:
                seq.generator = torch.Generator(self.device).manual_seed(seq.sampling_params.seed)
        generators = [seq.generator for seq in seqs]
        temperatures, top_ps = self._upload(torch.float32, [p.temperature for p in params], [p.top_p for p in params])
        (top_ks,) = self._upload(torch.int64, [p.top_k for p in params])
        # Known here from the parameters; reading it off the tensors would make the host wait for the GPU mid-step.
        filtered = any(0 < p.top_k < logits.shape[1] or p.top_p < 1.0 for p in params)
        return self.sampler(logits, temperatures, top_ks, top_ps,
                            generators if any(g is not None for g in generators) else None, filtered=filtered)

    @torch.inference_mode()
    def launch(self, seqs: list[Sequence], is_prefill: bool, previous: torch.Tensor | None = None) -> "PendingTokens":
        """One forward pass and its sampling, launched on the device and not waited for.
        previous: for a decode step scheduled ahead, the tokens the step before sampled for `seqs` (on the device),
        which take the place of their placeholder last tokens."""
        if is_prefill:
            step = Step("prefill", self._prefill_arrays(seqs), len(seqs))
            done = [seq.num_computed_tokens + seq.num_scheduled_tokens == len(seq) for seq in seqs]
        else:
            step = self._decode_step(seqs)
            done = [True] * len(seqs)
        logits = self._forward(step, previous)
        sampled = [seq for seq, d in zip(seqs, done) if d]
        check = self.workers.check if self.workers is not None else None
        return PendingTokens(self._sample(logits, sampled) if sampled and logits is not None else None, done, check)

    def compute_prefill_logits(self, seqs: list[Sequence]) -> torch.Tensor:
        """Logits of the last token of each scheduled prompt, without sampling (for checks against other engines)."""
        with torch.inference_mode():
            return self._forward(Step("prefill", self._prefill_arrays(seqs), len(seqs)))

    def _forward(self, step: Step, previous: torch.Tensor | None = None) -> torch.Tensor | None:
        """The logits of a step (None on ranks other than 0); on rank 0 of several, the other ranks are sent the step
        first and run it alongside."""
        with self._all_ranks():
            if self.workers is not None:
                self.workers.send(step, previous is not None)
            if previous is not None and self.world_size > 1:  # rank 0 alone knows the tokens sampled
                dist.broadcast(previous, src=0)
            if step.kind == "graph":
                logits = self.graphs.replay(step.arrays, step.num_seqs, previous)
            else:
                input_ids, positions = (self._prefill_inputs(step.arrays) if step.kind == "prefill"
                                        else self._decode_inputs(step))
                if previous is not None:
                    input_ids.copy_(previous)
                logits = self._run_model(input_ids, positions)
        reset_context()
        return logits

    @contextmanager
    def _all_ranks(self) -> Iterator[None]:
        """Where rank 0 runs a step with the other ranks: a failure inside ends the engine with the failing worker's
        error, if one failed or died (Workers.fail)."""
        if self.workers is None:
            yield
            return
        self.workers.check("Between steps")
        try:
            yield
        except BaseException as e:
            raise self.workers.fail(e, "In a step") from None

    @torch.inference_mode()
    def worker_step(self, step: Step, has_previous: bool) -> None:
        """A step rank 0 sent (on the other ranks), whose tokens in place of placeholders come by broadcast."""
        previous = torch.empty(step.num_seqs, dtype=torch.int64, device=self.device) if has_previous else None
        self._forward(step, previous)

    def exit(self) -> None:
        """Stop the other tensor-parallel ranks (nothing to stop with one)."""
        if self.workers is not None:
            self.workers.close()

    def _run_model(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        return self.model.compute_logits(self.model(input_ids, positions))


def run_worker(config: Config, driver: Driver) -> None:
    """A tensor-parallel rank's process: builds its shard, then runs each step rank 0 sends until told to stop (None) or
    rank 0 is gone. A failure is sent to rank 0 before the process ends with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal reaches every process: rank 0 handles it
    warnings.simplefilter("ignore")  # rank 0 gives the warnings of the model all ranks build
    Sequence.block_size = config.kvcache_block_size  # as LLMEngine sets it in rank 0's process
    conn = driver.conn
    started = False
    try:
        runner = ModelRunner(config, driver)
        conn.send(("ready", None))
        started = True
        while True:
            try:
                message = conn.recv()
            except EOFError:  # rank 0's process is gone
                return
            if message is None:
                return
            runner.worker_step(*message)
    except BaseException as e:
        try:
            conn.send(("error", traceback.format_exception_only(e)[-1].strip().splitlines()[0]))
        except OSError:
            pass
        if isinstance(e, ValueError) and not started:  # a refusal (a checkpoint that does not fit its shard)
            raise SystemExit(1) from None  # rank 0's WorkerError says it in one line
        raise  # a bug: its traceback goes to stderr as well


class PendingTokens:
    """The tokens a launched step samples. Read back through a pinned buffer and an event of their own, so that
    reading them waits for their step only, not for a step launched after it."""

    def __init__(self, sampled: torch.Tensor | None, done: list[bool], check: Callable[[str], None] | None = None):
        # check: Workers.check of a tensor-parallel engine, which raises if a worker died while the step ran.
        self.sampled, self.done, self.check = sampled, done, check
        self.host, self.ready = sampled, None
        if sampled is not None and sampled.is_cuda:
            self.host = torch.empty(sampled.shape, dtype=sampled.dtype, pin_memory=True)
            self.host.copy_(sampled, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()

    def rows(self, rows: list[int]) -> torch.Tensor:
        """The sampled tokens of these rows (ascending), on the device (nothing is read back)."""
        if len(rows) == len(self.sampled):
            return self.sampled
        index = torch.tensor(rows)
        if self.sampled.is_cuda:  # pinned, so the copy does not wait for the steps in flight
            index = index.pin_memory().to(self.sampled.device, non_blocking=True)
        return self.sampled.index_select(0, index)

    def token_ids(self) -> list[int | None]:
        """Each sequence's new token, or None for a prompt chunk that does not end its prompt."""
        if self.ready is not None:
            self.ready.synchronize()
        if self.check is not None:
            self.check("In a step")
        ids = iter(self.host.tolist() if self.host is not None else [])
        return [next(ids) if d else None for d in self.done]
