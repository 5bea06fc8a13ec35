"""The inference runtime: `LLM`, `SamplingParams`, `FusionOptions` (which M run the tuned kernels), and `WorkerError`
(what a tensor-parallel engine raises once a worker has failed)."""
from nanovllm.engine.tensor_parallel import WorkerError
from nanovllm.llm import LLM
from nanovllm.sampling_params import SamplingParams
from tuning_table import FusionOptions

__all__ = ["LLM", "SamplingParams", "FusionOptions", "WorkerError"]
