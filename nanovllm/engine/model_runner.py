"""The model runner: builds the model and its KV cache, picks each site's kernels from the tuning table, runs a step."""
import logging
import os
import warnings

import numpy as np
import torch

from nanovllm.config import Config
from nanovllm.engine.cuda_graph import DecodeGraphs, decode_arrays, decode_views, logits_bytes
from nanovllm.engine.sequence import Sequence
from nanovllm.layers.attention import Attention
from nanovllm.layers.fused_norm_linear import fuse_norm_linear
from nanovllm.layers.sampler import Sampler
from nanovllm.models import MODEL_REGISTRY
from nanovllm.utils.context import reset_context, set_context
from nanovllm.utils.loader import load_model
from kernels.epilogue import PLAIN
from tuning_table import open_table, select_configs

logger = logging.getLogger(__name__)
# The CPU KV cache takes at most this share of the available RAM.
CPU_KV_CACHE_RAM_FRACTION = 0.25


class ModelRunner:
    """Owns the model and its paged KV cache; turns scheduled sequences into one forward pass and sampled tokens.

    KV cache size: `num_kvcache_blocks` when given; on CUDA, what fits in `gpu_memory_utilization` of the GPU's
    memory after the weights and the activations of a warm-up prefill of `max_num_batched_tokens` tokens; on CPU,
    room for `max_num_seqs` sequences of `max_model_len` tokens, capped at a quarter of the available RAM.
    """

    def __init__(self, config: Config):
        self.config = config
        self.device, self.dtype = config.device, config.dtype
        self.block_size = config.kvcache_block_size
        self.max_blocks_per_seq = -(-config.max_model_len // self.block_size)
        hf_config = config.hf_config
        arch = next(a for a in hf_config.architectures if a in MODEL_REGISTRY)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with self.device:
                self.model = MODEL_REGISTRY[arch](hf_config, config.max_model_len)
        finally:
            torch.set_default_dtype(default_dtype)
        load_model(self.model, config.model)
        if config.fused_norm_linear:
            self._fuse_norm_linear()
        self.sampler = Sampler()
        self.attention_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.graphs: DecodeGraphs | None = None
        self.num_kvcache_blocks = self._num_kvcache_blocks()
        if self.num_kvcache_blocks < self.max_blocks_per_seq:
            raise ValueError(
                f"the KV cache holds {self.num_kvcache_blocks} blocks of {self.block_size} tokens, but one sequence of "
                f"max_model_len={config.max_model_len} tokens needs {self.max_blocks_per_seq}; lower max_model_len or "
                "give the cache more room (gpu_memory_utilization, num_kvcache_blocks)")
        self._bind_kv_cache(self.num_kvcache_blocks)
        if self.device.type == "cuda" and not config.enforce_eager:
            self.graphs = DecodeGraphs(self.model, config.max_num_seqs, self.block_size, self.max_blocks_per_seq,
                                       hf_config.vocab_size, self.device)

    def _fuse_norm_linear(self) -> None:
        """Every fused site and plain linear gets its launches per M from the tuning table (tuning_table's selection
        rule), resolved once here so that a forward pass (and the CUDA graphs captured from it) only indexes a
        list."""
        # The most rows one forward pass can have: a prefill step, an eager decode batch or a CUDA-graph batch.
        max_m = max(self.config.max_num_batched_tokens, self.config.max_num_seqs, 512)
        path, table = open_table(self.config.tuning_table, self.device)
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
        dtype = str(self.dtype).removeprefix("torch.")
        where = f"tuning table {path} ({table.gpu}, torch {table.torch}, triton {table.triton})" if table else \
            "no tuning table"
        for kernel in ("rms_norm_linear", "linear"):
            shapes = sorted({(K, N) for k, K, N, _ in selected if k == kernel})
            missing = [s for s in shapes if table is None or table.largest_bucket(kernel, *s, self.dtype) is None]
            logger.info("%s: %s covers %d of the model's %d %s shapes", kernel, where, len(shapes) - len(missing),
                        len(shapes), dtype)
            if table is not None and missing and kernel == "rms_norm_linear":
                warnings.warn(f"tuning table {path} has no {dtype} configs for (K, N) {missing}: those run the "
                              "heuristic default configs", stacklevel=3)

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
            seq.block_table = list(range(i * self.max_blocks_per_seq, i * self.max_blocks_per_seq + seq.num_blocks))
            seq.num_scheduled_tokens = seq_len
        self.launch(seqs, is_prefill=True).token_ids()  # waits for it

    def _upload(self, dtype: torch.dtype, *arrays) -> list[torch.Tensor]:
        """The arrays on the device, through one host-to-device copy: a step's metadata is a handful of short
        arrays, and each separate copy costs a pinned allocation and a copy launch while the GPU waits."""
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        host = [np.asarray(a, dtype=np_dtype) for a in arrays]
        flat = torch.from_numpy(np.concatenate([a.ravel() for a in host]))
        if self.device.type == "cuda":
            flat = flat.pin_memory().to(self.device, non_blocking=True)
        sizes = [a.size for a in host]
        return [part.view(a.shape) for part, a in zip(flat.split(sizes), host)]

    @staticmethod
    def _block_tables(seqs: list[Sequence]) -> np.ndarray:
        width = max(len(seq.block_table) for seq in seqs)
        tables = np.full((len(seqs), width), -1, dtype=np.int32)
        for i, seq in enumerate(seqs):
            tables[i, :len(seq.block_table)] = seq.block_table
        return tables

    def _prepare_prefill(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
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
        cu_seqlens_q, seq_lens, block_tables = self._upload(torch.int32, cu_seqlens_q, seq_lens,
                                                            self._block_tables(seqs))
        input_ids, positions, slot_mapping, logits_indices = self._upload(
            torch.int64, input_ids, np.concatenate(positions), np.concatenate(slots), logits_indices)
        set_context(is_prefill=True, cu_seqlens_q=cu_seqlens_q, seq_lens=seq_lens, slot_mapping=slot_mapping,
                    block_tables=block_tables, logits_indices=logits_indices)
        return input_ids, positions

    def _prepare_decode(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(seq.block_table) for seq in seqs)
        i64, i32 = decode_arrays(seqs, len(seqs), self.block_size, width)
        (i64,), (i32,) = self._upload(torch.int64, i64), self._upload(torch.int32, i32)
        input_ids, positions, context = decode_views(i64, i32, len(seqs), width)
        set_context(is_prefill=False, **context)
        return input_ids, positions

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
            logits = self._run_model(*self._prepare_prefill(seqs))
            done = [seq.num_computed_tokens + seq.num_scheduled_tokens == len(seq) for seq in seqs]
        else:
            if self.graphs is not None and len(seqs) <= self.graphs.max_batch:
                logits = self.graphs.run(seqs, previous)
            else:
                input_ids, positions = self._prepare_decode(seqs)
                if previous is not None:
                    input_ids.copy_(previous)
                logits = self._run_model(input_ids, positions)
            done = [True] * len(seqs)
        sampled = [seq for seq, d in zip(seqs, done) if d]
        pending = PendingTokens(self._sample(logits, sampled) if sampled else None, done)
        reset_context()
        return pending

    def compute_prefill_logits(self, seqs: list[Sequence]) -> torch.Tensor:
        """Logits of the last token of each scheduled prompt, without sampling (for checks against other engines)."""
        with torch.inference_mode():
            logits = self._run_model(*self._prepare_prefill(seqs))
        reset_context()
        return logits

    def _run_model(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(self.model(input_ids, positions))


class PendingTokens:
    """The tokens a launched step samples. Read back through a pinned buffer and an event of their own, so that
    reading them waits for their step only, not for a step launched after it."""

    def __init__(self, sampled: torch.Tensor | None, done: list[bool]):
        self.sampled, self.done = sampled, done
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
        ids = iter(self.host.tolist() if self.host is not None else [])
        return [next(ids) if d else None for d in self.done]
