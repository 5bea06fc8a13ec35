"""The contract's selection rule seen from the runtime: configs are checked once, where select_configs resolves them
(an unrunnable fused config fails the load, naming the table), and the launch path trusts them."""
import dataclasses

import pytest
import torch

import kernels.prepare
from kernels.epilogue import GATED, PLAIN, rotary
from tests.nanovllm.test_models_hf import engine, make_checkpoint
from tests.tuning_tables import INTERPRETER_CONFIG, entry, table, write
from tuning_table import FusionOptions, open_table, select, select_configs
from nanovllm import SamplingParams

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3")
    make_checkpoint(path, "qwen3")
    return str(path)


def test_the_runtime_launches_what_it_resolved_without_checking_it_again(qwen3, monkeypatch):
    llm = engine(qwen3)
    assert llm.model_runner.model.model.layers[0].mlp.gate_up_proj.launches[3] is not None

    def checked_again(*args, **kwargs):
        raise AssertionError("a resolved config was validated again at launch")

    monkeypatch.setattr(kernels.prepare, "check_launch", checked_again)
    out = llm.generate([[1, 2, 3, 4, 5]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                       use_tqdm=False)
    assert len(out[0]["token_ids"]) == 4


def test_a_fused_config_this_card_cannot_run_fails_the_load_naming_the_table(qwen3, tmp_path, monkeypatch):
    path = write(table([entry(64, 256, {1: INTERPRETER_CONFIG})]), tmp_path / "t.json")
    monkeypatch.setattr(select, "device_smem_limit", lambda device: 32_768)  # a smaller card than the tuner's
    with pytest.raises(ValueError, match=rf"tuning table {path}: its config for K=64, N=256 cannot run here "
                                         r"\(Config.num_stages/BLOCK_\*: needs ~\d+ bytes of shared memory"):
        engine(qwen3, tuning_table=path)


def test_each_form_launches_its_own_config_and_the_rest_run_plain(tmp_path):
    split = dataclasses.replace(INTERPRETER_CONFIG, BLOCK_K=32, SPLIT_K=2)  # split-K has no paired form
    _, t = open_table(write(table([entry(64, 256, {1: INTERPRETER_CONFIG, 4: split})]), tmp_path / "t.json"), CPU)
    for epilogue in (GATED, rotary(64, 1)):  # 256 rows: 4 heads of 64, one each for k and v
        launches = select_configs(t, "rms_norm_linear", 64, 256, torch.float32, epilogue, CPU, 8)
        assert launches[1].epilogue == epilogue and launches[1].config == epilogue.launched(INTERPRETER_CONFIG)
        assert launches[4].epilogue == PLAIN and launches[4].config == split
    with pytest.raises(ValueError, match="N=255: a gated"):
        select_configs(t, "rms_norm_linear", 64, 255, torch.float32, GATED, CPU, 8)
    with pytest.raises(ValueError, match="kernel 'attention': expected one of"):
        select_configs(t, "attention", 64, 256, torch.float32, PLAIN, CPU, 8)


def test_the_options_are_checked():
    for bad in (dict(untuned_max_m=-1), dict(linear_max_m=True), dict(min_speedup=0), dict(min_speedup=True)):
        with pytest.raises(ValueError, match="FusionOptions."):
            FusionOptions(**bad)


def test_a_win_inside_the_tuned_configs_spread_runs_the_separate_path(tmp_path):
    data = table([entry(64, 256, {1: INTERPRETER_CONFIG, 2: INTERPRETER_CONFIG, 4: INTERPRETER_CONFIG})],
                 linear=[entry(64, 128, {1: dataclasses.replace(INTERPRETER_CONFIG, SUMSQ_IN_LOOP=0)})])
    m1, m2, m4 = data["kernels"]["rms_norm_linear"][0]["buckets"]
    m1.update(latency_us=100.0, spread_us=0.2, baseline_us=101.0, speedup=1.01)  # 1% ahead, 0.2% spread: a win
    m2.update(latency_us=100.0, spread_us=2.0, baseline_us=101.0, speedup=1.01)  # 1% ahead, 2% spread: noise
    m4.update(latency_us=100.0, spread_us=0.0, baseline_us=100.0, speedup=1.0)  # an exact tie keeps min_speedup's rule
    data["kernels"]["linear"][0]["buckets"][0].update(latency_us=30.0, spread_us=0.3, baseline_us=30.03, speedup=1.001)
    _, t = open_table(write(data, tmp_path / "t.json"), CPU)
    fused = select_configs(t, "rms_norm_linear", 64, 256, torch.float32, PLAIN, CPU, 4)
    assert [launch is not None for launch in fused[1:]] == [True, False, True, True]  # M = 3 takes M = 4's bucket
    assert t.bucket("rms_norm_linear", 64, 256, torch.float32, 2).speedup_beyond_noise == pytest.approx(1.01 / 1.02)
    assert select_configs(t, "linear", 128, 64, torch.float32, PLAIN, CPU, 1)[1] is None  # mistral's down_proj case
