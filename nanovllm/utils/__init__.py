"""Helpers of the runtime: checkpoint loading, per-step context, random-weight checkpoints."""
