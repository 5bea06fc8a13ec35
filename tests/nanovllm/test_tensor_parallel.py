"""Tensor parallelism on the CPU (gloo, one process per rank): two ranks give one rank's greedy tokens, each running
its own shard's fused kernels (in Triton's interpreter) and tuned configs; bad sizes are refused in one line; a worker
that fails or is killed ends the engine with one error, in bounded time; and the tuner's `tp` shard shapes are the
runtime's. The last test runs two ranks on two GPUs (NCCL, CUDA graphs), where there are two."""
import dataclasses
import gc
import multiprocessing
import os
import re
import signal
import threading
import time

import pytest
import torch
import torch.distributed as dist
import transformers
from safetensors.torch import load_file, save_file

from kernels.epilogue import GATED, rotary
from nanovllm import LLM, SamplingParams, WorkerError
from nanovllm.engine import model_runner
from search_spaces.shapes import PRESETS, Site, parse_shapes, sites_from_config
from tests.nanovllm.test_models_hf import COMMON, CONFIGS, engine, hf_greedy, make_checkpoint, prompts
from tests.tuning_tables import INTERPRETER_CONFIG, entry, table, write

CPU = torch.device("cpu")  # gloo ranks, on a GPU machine too
STEPS = 12
GREEDY = SamplingParams(temperature=0, max_tokens=STEPS, ignore_eos=True)
# Told apart from the configs of the whole model's shapes, so that a site's config shows which (K, N) it was chosen for.
SHARD_CONFIG = dataclasses.replace(INTERPRETER_CONFIG, num_warps=2)
PLAIN_GEMM = dataclasses.replace(INTERPRETER_CONFIG, BLOCK_N=64, BLOCK_K=128, SUMSQ_IN_LOOP=0)
WORKER = "nanovllm-tp"  # the names of the worker processes


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """Every test leaves no worker process and no process group, whatever happened in it (they are ended here if it
    did, before the test is failed for it)."""
    yield
    left = [p for p in multiprocessing.active_children() if p.name.startswith(WORKER)]
    for p in left:
        p.kill()
        p.join()
    group = dist.is_initialized()
    if group:
        dist.destroy_process_group()
    assert not left and not group, f"left behind: workers {left}, a process group: {group}"


@pytest.fixture
def tp_engine():
    """Makes two-rank engines, each closed when the test ends."""
    made = []

    def make(path, **kwargs):
        made.append(engine(path, tensor_parallel_size=2, **{"device": CPU, **kwargs}))
        return made[-1]

    yield make
    for llm in made:
        llm.exit()


def bounded(fn, seconds: float = 60):
    """fn(), which must return or raise within `seconds`: a hang fails the test instead of stalling the suite (the
    autouse fixture then kills the workers, which releases the thread)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def shard_table(folder, whole: list[tuple[int, int]], shards: list[tuple[int, int]], linear: list[tuple[int, int]]):
    """Fused entries for the whole model's (K, N) (INTERPRETER_CONFIG) and its shards' (SHARD_CONFIG) up to M = 4,
    and the norm-free GEMM's (faster than F.linear) for `linear`."""
    fused = [entry(K, N, {4: INTERPRETER_CONFIG}) for K, N in whole]
    fused += [entry(K, N, {4: SHARD_CONFIG}) for K, N in shards if (K, N) not in whole]
    plain = [entry(K, N, {4: PLAIN_GEMM}) for K, N in linear]
    for e in plain:
        e["buckets"][0]["speedup"] = 1.1
    return write(table(fused, linear=plain), folder / "tp.json")


LLAMA_SITES = ([(64, 128), (64, 256)], [(64, 64), (64, 128)], [(32, 64), (64, 64)])  # head_dim 16
# The tiny models, and (the whole model's fused (K, N), its shards' at tp = 2, the shards' o_proj and down_proj).
TINY = {
    "llama": (CONFIGS["llama"], LLAMA_SITES),
    # Every projection with a bias: split with the column-parallel ones, added once (by rank 0) to the row-parallel.
    "llama-biases": (lambda: transformers.LlamaConfig(**COMMON, attention_bias=True, mlp_bias=True), LLAMA_SITES),
    "qwen3": (CONFIGS["qwen3"], ([(64, 256)], [(64, 128)], [(64, 64)])),  # head_dim 32: QKV and gate/up alike
}


@pytest.mark.parametrize("arch", sorted(TINY))
def test_two_ranks_give_the_tokens_of_one(arch, tmp_path, tp_engine):
    """Llama (grouped-query attention, 4 heads and 2 KV heads), with biases, and Qwen3 (tied embeddings, q/k norm):
    the fused kernels run in the interpreter on each rank's shard, with the table's config of the shard's (K, N)."""
    config, sites = TINY[arch]
    make_checkpoint(tmp_path, config())
    path = shard_table(tmp_path, *sites)
    one = engine(str(tmp_path), device=CPU, tuning_table=path)
    expected = [o["token_ids"] for o in one.generate(prompts(), GREEDY, use_tqdm=False)]
    two = tp_engine(str(tmp_path), tuning_table=path)
    assert [o["token_ids"] for o in bounded(lambda: two.generate(prompts(), GREEDY, use_tqdm=False))] == expected
    layer = two.model_runner.model.model.layers[0]
    assert layer.self_attn.qkv_proj.launches[4].config == SHARD_CONFIG
    assert one.model_runner.model.model.layers[0].self_attn.qkv_proj.launches[4].config == INTERPRETER_CONFIG
    assert layer.mlp.gate_up_proj.launches[1].epilogue == GATED
    assert layer.mlp.down_proj.launches[3].config == PLAIN_GEMM
    # The tuner's --tp 2 sites are the shards this rank runs.
    config = config().to_dict()
    ours = {"qkv": layer.self_attn.qkv_proj, "gate_up": layer.mlp.gate_up_proj, "o_proj": layer.self_attn.o_proj,
            "down_proj": layer.mlp.down_proj}
    sites = sites_from_config(config, tp=2) + sites_from_config(config, kernel="linear", tp=2)
    assert {s.name: (s.K, s.N) for s in sites} == {name: tuple(m.weight.shape[::-1]) for name, m in ours.items()}


def test_a_single_kv_head_is_replicated_and_each_rank_rotates_its_own_heads(tmp_path, tp_engine):
    """2 heads and 1 KV head of head_dim 64 on 2 ranks: a q head each and the KV head on both; the QKV site's rotary
    epilogue (q, k and the KV-cache write in the kernel) works on the shard's heads."""
    model = make_checkpoint(tmp_path, transformers.LlamaConfig(
        **{**COMMON, "num_attention_heads": 2, "num_key_value_heads": 1}, head_dim=64))
    expected = [hf_greedy(model, p)[:STEPS] for p in prompts()]
    # QKV's shard: (1 + 2 x 1) heads x 64 = 192 rows; gate/up's: 2 x 128 / 2.
    path = shard_table(tmp_path, [], [(64, 192), (64, 128)], [])
    llm = tp_engine(str(tmp_path), tuning_table=path, enforce_eager=True)
    qkv = llm.model_runner.model.model.layers[0].self_attn.qkv_proj
    assert qkv.weight.shape == (192, 64) and qkv.launches[1].epilogue == rotary(64, 1)
    assert [o["token_ids"] for o in bounded(lambda: llm.generate(prompts(), GREEDY, use_tqdm=False))] == expected


@pytest.mark.parametrize("tp, problem", [
    (3, "tensor_parallel_size=3 must divide the model's num_attention_heads=4 and intermediate_size=128, and divide "
        "its num_key_value_heads=2 or be a multiple of it"),
    (0, "tensor_parallel_size must be an int >= 1, got 0"),
    (True, "tensor_parallel_size must be an int >= 1, got True"),
    (2.0, "tensor_parallel_size must be an int >= 1, got 2.0"),
])
def test_a_bad_size_is_refused_in_one_line_before_any_process_starts(tmp_path, tp, problem):
    make_checkpoint(tmp_path, "llama")
    with pytest.raises(ValueError) as info:
        engine(str(tmp_path), device=CPU, tensor_parallel_size=tp)
    assert str(info.value) == problem
    assert not [p for p in multiprocessing.active_children() if p.name.startswith(WORKER)]


def test_a_worker_killed_mid_generation_ends_the_engine_with_one_error(tmp_path, tp_engine):
    make_checkpoint(tmp_path, "qwen3")
    llm = tp_engine(str(tmp_path), fused_norm_linear=False)
    (worker,) = llm.model_runner.workers.processes
    step, calls, killed_at = llm.step, [], []

    def kill():
        killed_at.append(time.monotonic())
        os.kill(worker.pid, signal.SIGKILL)

    def step_then_kill():
        calls.append(None)
        if len(calls) == 3:  # the second decode step: the kill lands while rank 0 runs it, or just before
            threading.Timer(0.01, kill).start()
        return step()

    llm.step = step_then_kill
    long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
    with pytest.raises(WorkerError) as info:
        bounded(lambda: llm.generate(prompts(), long, use_tqdm=False))
    assert time.monotonic() - killed_at[0] < 10  # noticed within seconds (here: tens of milliseconds)
    message = str(info.value)
    assert message.endswith(f"tensor-parallel rank 1 (pid {worker.pid}) died, killed by SIGKILL; the engine is "
                            "closed: create a new LLM") and message.split(",")[0] in ("In a step", "Between steps")
    assert not worker.is_alive() and not dist.is_initialized()
    assert llm.is_finished()  # the requests were aborted
    with pytest.raises(WorkerError, match=f"^{re.escape(message)}$"):  # later calls: the same error, at once
        bounded(lambda: llm.generate(prompts()[:1], GREEDY, use_tqdm=False), 5)


def test_a_worker_that_raises_in_a_step_ends_the_engine_with_its_error(tmp_path, tp_engine):
    make_checkpoint(tmp_path, "llama")
    llm = tp_engine(str(tmp_path), fused_norm_linear=False)
    (worker,) = llm.model_runner.workers.processes
    llm.model_runner.workers.conns[0].send(("not a step",))  # a step the worker cannot run
    with pytest.raises(WorkerError, match=r"^(In a step|Between steps), tensor-parallel rank 1 \(pid \d+\) raised "
                                          r"TypeError: .*worker_step\(\) missing 1 required positional argument"):
        bounded(lambda: llm.generate(prompts(), GREEDY, use_tqdm=False))
    worker.join(5)
    assert worker.exitcode == 1


def test_a_shard_only_rank_1_cannot_load_ends_the_start_with_its_error(tmp_path, capfd):
    """A checkpoint whose k_proj lacks its last row: rank 0's half loads, rank 1's is short by one."""
    make_checkpoint(tmp_path, "llama")
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    name = "model.layers.1.self_attn.k_proj.weight"
    tensors[name] = tensors[name][:-1].clone()
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(WorkerError) as info:
        bounded(lambda: engine(str(tmp_path), device=CPU, tensor_parallel_size=2, fused_norm_linear=False))
    assert str(info.value).startswith("While starting, tensor-parallel rank 1 (pid ")
    assert str(info.value).endswith(f") raised ValueError: {name}: checkpoint shape (15, 64), model (16, 64); the "
                                    "engine is closed: create a new LLM")
    assert "Traceback" not in capfd.readouterr().err  # the worker leaves the telling to rank 0's one line


def test_a_worker_killed_while_starting_ends_the_start_with_one_error(tmp_path, monkeypatch):
    make_checkpoint(tmp_path, "llama")
    load, killed = model_runner.load_model, []

    def kill_the_workers_then_load(*args):  # rank 0's load: the workers are still starting
        for p in multiprocessing.active_children():
            if p.name.startswith(WORKER):
                os.kill(p.pid, signal.SIGKILL)
                killed.append(p.pid)
        return load(*args)

    monkeypatch.setattr(model_runner, "load_model", kill_the_workers_then_load)
    with pytest.raises(WorkerError) as info:
        bounded(lambda: engine(str(tmp_path), device=CPU, tensor_parallel_size=2, fused_norm_linear=False))
    assert str(info.value) == (f"While starting, tensor-parallel rank 1 (pid {killed[0]}) died, killed by SIGKILL; the "
                               "engine is closed: create a new LLM")


def test_exit_and_collection_stop_the_workers(tmp_path, tp_engine):
    make_checkpoint(tmp_path, "llama")
    llm = tp_engine(str(tmp_path), fused_norm_linear=False)
    (worker,) = llm.model_runner.workers.processes
    llm.exit()
    assert not worker.is_alive() and worker.exitcode == 0 and not dist.is_initialized()
    with pytest.raises(WorkerError, match="^the engine is closed: create a new LLM$"):
        llm.generate(prompts(), GREEDY, use_tqdm=False)
    llm = engine(str(tmp_path), device=CPU, tensor_parallel_size=2, fused_norm_linear=False)  # a new one starts
    (worker,) = llm.model_runner.workers.processes
    del llm
    gc.collect()
    assert not worker.is_alive() and not dist.is_initialized()


def test_the_tuners_tp_presets_cover_each_ranks_shard():
    sites = {s.name: s for s in parse_shapes("llama-7b", tp=2) + parse_shapes("llama-7b", "linear", tp=2)}
    assert sites == {
        "qkv": Site("qkv", 4096, (16 + 2 * 16) * 128, rotary(128, 16)), "gate_up": Site("gate_up", 4096, 11008, GATED),
        "o_proj": Site("o_proj", 2048, 4096), "down_proj": Site("down_proj", 5504, 4096)}
    # 8 KV heads on 16 ranks: each rank one KV head, replicated on 2, and 2 q heads.
    qkv, _ = sites_from_config(PRESETS["mistral-7b"], tp=16)
    assert (qkv.N, qkv.epilogue) == ((2 + 2) * 128, rotary(128, 1))
    assert parse_shapes("llama-7b") == parse_shapes("llama-7b", tp=1)
    assert parse_shapes("12288x4096", tp=2) == [Site("12288x4096", 4096, 12288)]  # a shape as named
    for tp, problem in [(3, "llama-7b: --tp 3 must divide num_attention_heads=32 and intermediate_size=11008, and "
                               "divide num_key_value_heads=32 or be a multiple of it"),
                        (0, "--tp: expected an int >= 1, got 0"), (True, "--tp: expected an int >= 1, got True")]:
        with pytest.raises(ValueError) as info:
            parse_shapes("llama-7b", tp=tp)
        assert str(info.value) == problem


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_give_the_tokens_of_one_and_a_killed_worker_one_error(tmp_path):
    """NCCL ranks with their CUDA graphs: one GPU's tokens; then a worker killed mid-generation (the collectives it
    leaves would wait on the GPU forever but for the watcher's abort) ends the engine with one error."""
    make_checkpoint(tmp_path, "llama")
    expected = [o["token_ids"] for o in engine(str(tmp_path), device="cuda").generate(prompts(), GREEDY,
                                                                                       use_tqdm=False)]
    llm = LLM(str(tmp_path), device="cuda", tensor_parallel_size=2, dtype=torch.float32, max_model_len=128,
              max_num_seqs=8, num_kvcache_blocks=64)
    try:
        assert llm.model_runner.graphs.graphs
        assert [o["token_ids"] for o in bounded(lambda: llm.generate(prompts(), GREEDY, use_tqdm=False))] == expected
        (worker,) = llm.model_runner.workers.processes
        threading.Timer(0.5, os.kill, (worker.pid, signal.SIGKILL)).start()
        long = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)
        with pytest.raises(WorkerError, match=r"tensor-parallel rank 1 \(pid \d+\) died, killed by SIGKILL"):
            bounded(lambda: [llm.generate(prompts(), long, use_tqdm=False) for _ in range(100)])
    finally:
        llm.exit()
