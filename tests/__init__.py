"""The test suite: CPU tests (Triton's interpreter) that also run compiled on a GPU."""
