"""The compile pool's processes: out of the terminal's process group (its Ctrl-C is the tuner's), killed when the pool
closes, and gone when the process that started them dies without closing it. (A real Ctrl-C of a whole tune with a
pool: tests/cli/test_cli.py::test_ctrl_c_keeps_every_finished_trial.)"""
import dataclasses
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from autotune.compile_pool import CompilePool
from kernels.config import Config
from search_spaces import get_space
from search_spaces.base import Params
from tests.autotune.test_tuner import DEVICE, SPACE, TINY

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Config(16, 32, 32, 2, 2, 1, 1)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by whoever inherited it, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def test_a_compile_worker_has_a_process_group_of_its_own():
    with CompilePool(1, DEVICE) as pool:
        assert pool.submit(SPACE.name, TINY, CONFIG).result(timeout=120) is None  # the worker is up
        (worker,) = multiprocessing.active_children()
        # A session of its own: the terminal's SIGINT goes to the foreground group, this process's, and the
        # compilers a worker runs (ptxas) inherit the worker's.
        assert os.getpgid(worker.pid) == os.getsid(worker.pid) == worker.pid != os.getpgid(0)
    assert not worker.is_alive()


def test_closing_the_pool_kills_the_compiles_in_flight():
    slow = dataclasses.replace(TINY, K=1 << 16)  # minutes of Triton's interpreter
    pool = CompilePool(1, DEVICE)
    compiling = pool.submit(SPACE.name, slow, CONFIG)
    deadline = time.monotonic() + 120
    while not compiling.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    (worker,) = multiprocessing.active_children()
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 10 and not worker.is_alive()


def test_compile_workers_do_not_outlive_a_killed_parent():
    # A parent that starts a pool, compiles one candidate and dies without closing it (kill -9, the OOM killer).
    script = textwrap.dedent("""
        import multiprocessing, os, signal
        from autotune.compile_pool import CompilePool
        from tests.autotune.test_compile_pool import CONFIG, DEVICE, SPACE, TINY
        if __name__ == "__main__":
            pool = CompilePool(1, DEVICE)
            assert pool.submit(SPACE.name, TINY, CONFIG).result(timeout=120) is None
            print(*[p.pid for p in multiprocessing.active_children()], flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    (pid,) = map(int, r.stdout.split())
    assert wait_gone(pid), f"compile worker {pid} outlived its parent"


def test_a_compile_worker_loads_a_plugin_space_by_its_name(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))  # the spawned worker gets this process's path
    space = get_space("softmax_plugin:SoftmaxSpace")
    [problem] = space.problems("3x40", "float32")
    with CompilePool(1, DEVICE) as pool:
        good = Params(dict(BLOCK=64, ROWS=2, num_warps=2, num_stages=1))
        assert pool.submit(space.name, problem, good).result(timeout=120) is None
        assert pool.submit(space.name, problem, Params(dict(BLOCK=64))).result(timeout=120) == "KeyError: 'ROWS'"
