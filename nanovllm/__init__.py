"""The inference runtime: `LLM`, `SamplingParams`, and `FusionOptions` (which M run the tuned kernels)."""
from nanovllm.llm import LLM
from nanovllm.sampling_params import SamplingParams
from tuning_table import FusionOptions

__all__ = ["LLM", "SamplingParams", "FusionOptions"]
