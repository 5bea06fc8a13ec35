"""The model's layers, each running the kernels of `kernels/` (or their references on the CPU)."""
