"""The supported architectures, by the names Hugging Face configs give them."""
from nanovllm.models.llama import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

# config.json's `architectures` entry -> model class.
MODEL_REGISTRY = {cls.__name__: cls for cls in (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
                                                Qwen3ForCausalLM)}
