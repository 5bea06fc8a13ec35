"""Tests of nanovllm/."""
