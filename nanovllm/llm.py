"""`LLM`, the user's entry point: the engine under the name nano-vLLM and vLLM give it."""
from nanovllm.engine.llm_engine import LLMEngine


class LLM(LLMEngine):
    """LLM(model_path, *, dtype=None, device=None, max_model_len=None (4096, or the model's max_position_embeddings
    where less), max_num_seqs=256, max_num_batched_tokens=16384, gpu_memory_utilization=0.9, enforce_eager=False,
    kvcache_block_size=16, num_kvcache_blocks=None, fused_norm_linear=True, tuning_table=None,
    fusion=FusionOptions(), tensor_parallel_size=1)."""
