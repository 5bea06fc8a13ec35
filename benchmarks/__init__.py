"""The benchmark scripts (run as files; a package so they can share benchmarks/common.py and engine_runs.py)."""
