"""The bottom layer: every Triton kernel of the project with its wrapper, PyTorch reference and launch parameters."""
