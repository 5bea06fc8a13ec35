"""The lookup tables shipped in tables/: each loads, and the H200 one covers the models its notes claim."""
from pathlib import Path

import pytest

from tuning_table import load_table
from search_spaces.shapes import PRESETS, sites_from_config

TABLES = sorted((Path(__file__).resolve().parents[2] / "tables").glob("*.json"))
# docs/PERF_NOTES.md: llama-7b tuned at M = 1-16384, the other three at M = 1-32 (plain linears 1-16).
H200_MODELS = ("llama-7b", "llama-13b", "mistral-7b", "qwen3-0.6b")


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.name)
def test_shipped_table_loads_for_its_gpu(path):
    assert load_table(path).gpu == path.stem


@pytest.mark.parametrize("model", H200_MODELS)
def test_h200_table_covers_the_models_decode_sites(model):
    table = load_table(Path(__file__).resolve().parents[2] / "tables" / "h200.json")
    for site in sites_from_config(PRESETS[model]):
        assert table.largest_bucket("rms_norm_linear", site.K, site.N, "bfloat16") >= 32, (model, site)
        # Every decode batch up to 32 rows finds a bucket the tuner measured faster than the separate path.
        assert all(table.bucket("rms_norm_linear", site.K, site.N, "bfloat16", m).speedup >= 1.0
                   for m in range(1, 33)), (model, site)
    for site in sites_from_config(PRESETS[model], kernel="linear"):
        assert table.largest_bucket("linear", site.K, site.N, "bfloat16") >= 16, (model, site)
