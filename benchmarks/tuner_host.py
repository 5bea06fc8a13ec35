"""The tuner's own host work per study, with the GPU's part stubbed out: Optuna's sampling and storage (SQLite), the
warm starts, the budget check, our records. Runs on the CPU.

Each candidate's check is only its feasibility and its "timing" a fixed function of the config (a preferred tile),
so what is left is what the timing process does between kernels; on a GPU that time is spent with the GPU idle.

    python3 benchmarks/tuner_host.py [--studies 4] [--trials 24] [--patience 5]
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time

import torch

from autotune import objective, tuner
from autotune.compile_pool import CompilePool
from autotune.device import GpuInfo
from autotune.heartbeat import tuning_storage
from autotune.timer import Timing, Workload
from db.storage import Recorder, open_engine
from kernels.epilogue import GATED
from search_spaces import Problem, get_space

CPU = torch.device("cpu")


class ConfigTimer:
    """A latency from the config alone (best at 16x128x128, 4 warps, 4 stages): nothing runs."""

    def measure(self, workload: Workload, repeats: int) -> Timing:
        c = workload.config
        us = 30.0 if c is None else 25.0 * (1 + 0.05 * (abs(math.log2(c.BLOCK_N / 128)) + abs(c.num_stages - 4)
                                                       + abs(math.log2(c.num_warps / 4))))
        return Timing(us, 0.01 * us, (us,) * repeats)


class HostOnlyEvaluator(objective.Evaluator):
    """The Evaluator without inputs or launches: a candidate is correct when it is feasible."""

    def __init__(self, space, problem, device, timer, l2_bytes, seed=0):
        self.space, self.problem, self.device, self.timer = space, problem, device, timer
        self.smem_limit, self.n_buffers, self.baseline = 228 * 1024, 1, None

    def workload(self, config):
        return Workload(self.problem, config, lambda i: None, 1)

    def check(self, config):
        return self.space.violation(config, self.problem, self.smem_limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=4, help="M buckets 1, 16, 256, 4096, ... of gate/up")
    parser.add_argument("--trials", type=int, default=tuner.TuneSettings.trials)
    parser.add_argument("--patience", type=int, default=getattr(tuner.TuneSettings, "patience", 0))
    args = parser.parse_args()
    tuner.Evaluator = HostOnlyEvaluator
    gpu = GpuInfo(name="host only", short_name="h100", sm_count=132, memory_bytes=80 << 30, driver="-",
                  torch=torch.__version__, triton="-", l2_bytes=50 << 20)
    settings = {"trials": args.trials}
    if hasattr(tuner.TuneSettings, "patience"):
        settings["patience"] = args.patience
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{d}/host.db"
        t = tuner.Tuner(get_space("rms_norm_linear"), tuning_storage(url), Recorder(open_engine(url)), gpu, CPU,
                        ConfigTimer(), CompilePool(0, CPU), tuner.TuneSettings(**settings))
        start = time.perf_counter()
        for i in range(args.studies):
            t.tune(Problem(16 ** i, 4096, 22016, "bfloat16", GATED))
        elapsed = time.perf_counter() - start
    print(f"{args.studies} studies, --trials {args.trials} --patience {settings.get('patience', '-')}: "
          f"{elapsed:.2f} s, {elapsed / args.studies:.2f} s of host work a study")


if __name__ == "__main__":
    main()
