"""The GPU side of tuning: the CUDA-event timer, precompiling in worker processes, and a short real tune."""
import optuna
import pytest
import torch

from autotune.compile_pool import CompilePool
from autotune.device import detect_gpu
from autotune.objective import Evaluator
from autotune.timer import CudaEventTimer
from autotune.tuner import Tuner, TuneSettings
from db.storage import Recorder, open_engine
from kernels.config import Config
from search_spaces import Problem, get_space

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
SPACE = get_space("rms_norm_linear")


def test_timer_measures_kernels_not_launches_at_both_ends():
    timer = CudaEventTimer()
    gpu = detect_gpu()
    short = Evaluator(SPACE, Problem(1, 1024, 1024), torch.device("cuda"), timer, gpu.l2_bytes)
    # A 2 MiB weight: many rotating copies keep it from being served out of L2.
    assert short.n_buffers * SPACE.footprint_bytes(short.problem) >= 3 * gpu.l2_bytes or short.n_buffers == 64
    t = short.time_baseline(10)
    # 2 MiB of weight at a few TB/s: a handful of microseconds, far below a Python launch of the baseline.
    assert 0 < t.median_us < 20 and len(t.samples_us) == 10
    long = Evaluator(SPACE, Problem(8192, 4096, 8192), torch.device("cuda"), timer, gpu.l2_bytes)
    t = long.time_baseline(5)
    assert t.median_us > 200 and t.spread_us >= 0
    # A bf16 GEMM of 0.55 TFLOP cannot beat 3 PFLOP/s: the events measured the kernel, not the launch.
    assert 2 * 8192 * 4096 * 8192 / (t.median_us * 1e-6) < 3e15


def test_precompile_in_worker_processes_reports_failures():
    cuda = torch.device("cuda")
    problem = Problem(16, 4096, 4096)
    with CompilePool(2, cuda) as pool:
        ok = pool.submit(SPACE.name, problem, Config(16, 64, 128, 4, 4, 1, 2))
        too_big = pool.submit(SPACE.name, problem, Config(256, 256, 256, 8, 8, 8, 1))
        assert ok.result(timeout=300) is None
        assert "shared memory" in too_big.result(timeout=300)


def test_short_real_tune(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'gpu.db'}"
    cuda = torch.device("cuda")
    with CompilePool(2, cuda) as pool:
        tuner = Tuner(SPACE, optuna.storages.RDBStorage(url), Recorder(open_engine(url)), detect_gpu(), cuda,
                      CudaEventTimer(), pool, TuneSettings(trials=8))
        outcome = tuner.tune(Problem(16, 4096, 4096))
    assert outcome.best is not None and outcome.best.correct and outcome.best.speedup > 0
    assert len(outcome.leaders) == 3
