"""After a failure (Ctrl-C, a refused request, a step that raises) the engine is empty and gives a fresh engine's
tokens."""
import os
import signal
import threading

import pytest

from nanovllm import SamplingParams
from tests.nanovllm.test_engine import GREEDY, llm, path, plain, prompts  # noqa: F401 (path and plain are fixtures)

# Long enough (about a hundred decode steps) that a SIGINT sent a few steps in lands in the middle of it.
LONG = SamplingParams(temperature=0, max_tokens=90, ignore_eos=True)


def assert_empty(engine):
    bm = engine.scheduler.block_manager
    assert engine.is_finished() and engine.ahead is None
    assert not bm.used_block_ids and bm.num_free_blocks == len(bm.blocks)
    assert all(block.ref_count == 0 for block in bm.blocks)


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt in the main thread, as in a terminal, whatever handler was set."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_generate_leaves_the_engine_as_new(path, monkeypatch, sigint_raises):
    expected = llm(path).generate(prompts(), LONG, use_tqdm=False)
    engine = llm(path)
    step = engine.step
    # A real SIGINT from another thread, at a different moment of a different step each time.
    for delay in (0.0, 0.001, 0.002, 0.003, 0.005, 0.008):
        calls, timer = [], threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))

        def step_then_interrupt(calls=calls, timer=timer):
            calls.append(None)
            if len(calls) == 3:
                timer.start()
            elif len(calls) == 40:
                timer.join()  # on a slow machine: the SIGINT still lands inside generate, not in a later test
            return step()

        monkeypatch.setattr(engine, "step", step_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            engine.generate(prompts(), LONG, use_tqdm=False)
        assert_empty(engine)
    monkeypatch.undo()
    assert engine.generate(prompts(), LONG, use_tqdm=False) == expected


@pytest.mark.parametrize("where", ["prefill", "launch_ahead", "postprocess_with_a_step_ahead"])
def test_an_interrupted_step_aborts_every_request(path, plain, monkeypatch, where):
    """Deterministic points of a step: the first prefill (its prompt blocks are registered in the prefix cache but
    their K/V are never written), the launch of a step ahead (placeholders appended), and the recording of a step's
    tokens while the step ahead is in flight."""
    engine = llm(path)
    runner, scheduler = engine.model_runner, engine.scheduler
    launch, postprocess = runner.launch, scheduler.postprocess

    def failing_launch(seqs, is_prefill, previous=None):
        if (where == "prefill" and is_prefill) or (where == "launch_ahead" and previous is not None):
            raise KeyboardInterrupt
        return launch(seqs, is_prefill, previous=previous)

    def failing_postprocess(seqs, token_ids):
        if engine.ahead is not None:
            raise KeyboardInterrupt
        postprocess(seqs, token_ids)

    if where == "postprocess_with_a_step_ahead":
        monkeypatch.setattr(scheduler, "postprocess", failing_postprocess)
    else:
        monkeypatch.setattr(runner, "launch", failing_launch)
    with pytest.raises(KeyboardInterrupt):
        engine.generate(prompts(), GREEDY, use_tqdm=False)
    assert_empty(engine)
    monkeypatch.undo()
    assert [o["token_ids"] for o in engine.generate(prompts(), GREEDY, use_tqdm=False)] == plain


def test_step_failing_on_its_own_aborts_its_requests(path, plain, monkeypatch):
    engine = llm(path)
    seqs = [engine.add_request(p, GREEDY) for p in prompts()]
    engine.step()
    monkeypatch.setattr(engine.model_runner, "launch", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        engine.step()
    assert [seq.finish_reason for seq in seqs] == ["abort"] * 3
    assert_empty(engine)
    monkeypatch.undo()
    assert [o["token_ids"] for o in engine.generate(prompts(), GREEDY, use_tqdm=False)] == plain


@pytest.mark.parametrize("seed", ["7", 7.0, 2**70, True, -1])
def test_a_bad_seed_is_refused_in_one_line_and_the_engine_serves_on(path, plain, seed):
    engine = llm(path)
    with pytest.raises((TypeError, ValueError), match="^seed ") as info:
        engine.generate(prompts(), [GREEDY, GREEDY, SamplingParams(temperature=0.8, seed=seed)], use_tqdm=False)
    assert "\n" not in str(info.value)
    assert_empty(engine)
    assert [o["token_ids"] for o in engine.generate(prompts(), GREEDY, use_tqdm=False)] == plain


def test_a_request_failing_mid_step_among_good_ones(path, plain):
    engine = llm(path)
    bad = SamplingParams(temperature=0.8, seed=1)
    object.__setattr__(bad, "seed", "1")  # past SamplingParams' checks: torch refuses it inside the step
    with pytest.raises(RuntimeError, match="manual_seed"):
        engine.generate(prompts(), [GREEDY, bad, GREEDY], use_tqdm=False)
    assert_empty(engine)
    assert [o["token_ids"] for o in engine.generate(prompts(), GREEDY, use_tqdm=False)] == plain
