"""The engine: scheduling, the paged KV cache, and running a model step by step."""
