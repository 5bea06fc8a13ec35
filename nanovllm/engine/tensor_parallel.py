"""Tensor parallelism's processes, as in nano-vLLM: rank 0 runs in the engine's process and drives; ranks 1..N-1 are
spawned processes that build their shard of the model and then run each step rank 0 sends them. The layers'
collectives (the row-parallel all-reduces, the LM head's gather) go through torch.distributed: NCCL on GPUs (rank r
on cuda:r, NVLink multicast off unless NCCL_NVLS_ENABLE says otherwise), gloo on the CPU.

A step reaches the workers as its inputs, prepared once on rank 0 as host arrays (model_runner.Step), down one pipe per
worker, before rank 0 runs it too; workers send nothing back but their failure. A pipe rather than nano-vLLM's
fixed-size shared memory: a prefill's arrays have any size, and a pipe and a process sentinel can be waited on
together, which is how each side notices the other die.

A worker that fails ends the engine with one WorkerError, never a wait on a dead peer:
- a worker that raises sends its error to rank 0 and exits; one that is killed just exits;
- rank 0 notices through the worker's process sentinel while the ranks start (Workers.wait) and before each step
  (Workers.check), and through a collective failing when a peer is gone: gloo fails it as soon as the peer's socket
  closes; on NCCL, where it would wait on the GPU forever, a watcher thread aborts the communicators once a worker's
  process has ended;
- then every other worker is stopped (the ranks may be out of step), and each later call raises the same error.
An error of rank 0's own while the ranks run a step together (Ctrl-C) closes the engine too, for the same reason.
What is left to torch's process-group timeout: a peer that hangs alive, and one that dies between saying it loaded
and joining the group. Workers.close (LLM.exit(), garbage collection, interpreter exit) stops the workers; if rank 0's
process dies they end too: an idle one reads end-of-file, one in a gloo collective sees the socket close (one in a
NCCL collective waits for the timeout).
"""
import multiprocessing
import os
import signal
import threading
import weakref
from collections.abc import Callable
from multiprocessing import connection

import torch
import torch.distributed as dist

from nanovllm.config import Config

HOST = "127.0.0.1"
# After a collective failed on rank 0: how long the worker behind it may take to be seen gone (it is exiting).
FAILURE_GRACE_S = 2.0
# How long workers told to stop (LLM.exit()) may take before they are terminated.
STOP_TIMEOUT_S = 5.0
CLOSED = "the engine is closed: create a new LLM"


class WorkerError(RuntimeError):
    """A tensor-parallel worker failed or died, or the engine was closed: it cannot run steps any more."""


def join_group(store: dist.Store, rank: int, world_size: int, device: torch.device) -> None:
    # Defaults an environment that sets them overrides: NVLink multicast (NVLS) off, as the GPU hosts this runs on
    # require; and a NCCL error aborts the communicators instead of torch's default of ending the process, so that
    # rank 0 lives to raise the WorkerError.
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                            world_size=world_size)


class Driver:
    """A worker's link to rank 0: its rank, the pipe that brings its steps (and takes back its failure), and the port
    of the store where the ranks meet."""

    def __init__(self, rank: int, conn: connection.Connection, store_port: int, world_size: int):
        self.rank, self.conn, self.store_port, self.world_size = rank, conn, store_port, world_size

    def join(self, device: torch.device) -> None:
        """Tell rank 0 this rank has loaded its shard, then join the process group."""
        self.conn.send(("loaded", None))
        store = dist.TCPStore(HOST, self.store_port, self.world_size, is_master=False)
        join_group(store, self.rank, self.world_size, device)


class Workers:
    """Rank 0's handle on ranks 1..N-1: spawns them (each runs `target(config, Driver)`), sends them steps, notices
    their failures and stops them."""

    def __init__(self, config: Config, target: Callable[[Config, Driver], None]):
        if dist.is_initialized():
            raise RuntimeError("torch.distributed is already initialized in this process: one LLM with "
                               "tensor_parallel_size > 1 at a time (call exit() on the other)")
        self.world_size = config.tensor_parallel_size
        self.store = dist.TCPStore(HOST, 0, self.world_size, is_master=True, wait_for_workers=False)
        self.ranks = Ranks()
        self.processes, self.conns = self.ranks.processes, self.ranks.conns
        self.error: str | None = None
        # Stops the workers when this handle is collected or the interpreter exits, as close() does.
        self._finalizer = weakref.finalize(self, self.ranks.stop, orderly=True)
        context = multiprocessing.get_context("spawn")
        for rank in range(1, self.world_size):
            ours, theirs = context.Pipe()
            driver = Driver(rank, theirs, self.store.port, self.world_size)
            process = context.Process(target=target, args=(config, driver), name=f"nanovllm-tp{rank}", daemon=True)
            process.start()
            theirs.close()
            self.processes.append(process)
            self.conns.append(ours)

    @property
    def joined(self) -> bool:
        return self.ranks.joined

    def join(self, device: torch.device) -> None:
        """Once every worker has loaded its shard, join the process group with them."""
        self.wait("loaded")
        join_group(self.store, 0, self.world_size, device)
        self.ranks.joined = True
        if dist.get_backend() == "nccl":
            threading.Thread(target=self.ranks.abort_on_death, name="nanovllm-tp-watch", daemon=True).start()

    def wait(self, message: str) -> None:
        """Until every worker has sent `message`; the WorkerError of the first one that fails or dies first."""
        waiting = set(range(len(self.processes)))
        while waiting:
            ready = connection.wait([self.conns[i] for i in waiting] + [self.processes[i].sentinel for i in waiting])
            for i in sorted(waiting):
                if self.conns[i] not in ready and self.processes[i].sentinel not in ready:
                    continue
                try:  # a process that ended has closed its end: this reads its last message or end-of-file
                    kind, text = self.conns[i].recv()
                except (EOFError, ConnectionResetError):  # a killed process's end may read as a reset
                    kind, text = None, None
                if kind == message:
                    waiting.discard(i)
                else:
                    story = f"raised {text}" if kind == "error" else self._ending(i)
                    raise self._close(f"While starting, {self._name(i)} {story}")

    def send(self, *message) -> None:
        for conn in self.conns:
            conn.send(message)

    def check(self, during: str) -> None:
        """Raise the engine's WorkerError if it is closed or a worker's process has ended."""
        if self.error is None:
            for i, process in enumerate(self.processes):
                if not process.is_alive():
                    raise self._close(f"{during}, {self._name(i)} {self._story(i)}")
        if self.error is not None:
            raise WorkerError(self.error)

    def fail(self, error: BaseException, during: str) -> BaseException:
        """What rank 0 raises for `error`, raised while the ranks ran something together: the WorkerError of a worker
        that failed or died, if one did (then `error` is how rank 0 came to notice), else `error` itself. Either way
        the ranks may be out of step, so the engine is closed."""
        if isinstance(error, WorkerError):
            return error
        if isinstance(error, (RuntimeError, OSError)):  # how a collective or a pipe shows a lost peer
            connection.wait([p.sentinel for p in self.processes], FAILURE_GRACE_S)
        for i in range(len(self.processes)):
            story = self._story(i)
            if story is not None:
                return self._close(f"{during}, {self._name(i)} {story}")
        self._close(f"{during}, rank 0 stopped with {type(error).__name__} while the other ranks ran on")
        return error

    def _name(self, i: int) -> str:
        return f"tensor-parallel rank {i + 1} (pid {self.processes[i].pid})"

    def _story(self, i: int) -> str | None:
        """How worker i failed, if it did: the error it sent, or how its process ended."""
        try:
            while self.conns[i].poll():
                kind, text = self.conns[i].recv()
                if kind == "error":
                    return f"raised {text}"
        except (EOFError, ConnectionResetError):  # it closed its end (or was killed, which may read as a reset)
            return self._ending(i)
        return self._ending(i) if self.processes[i].exitcode is not None else None

    def _ending(self, i: int) -> str:
        self.processes[i].join(FAILURE_GRACE_S)
        code = self.processes[i].exitcode
        if code is None:
            return "closed its pipe"
        return f"died, killed by {signal.Signals(-code).name}" if code < 0 else f"died with exit code {code}"

    def _close(self, message: str) -> WorkerError:
        self.error = f"{message}; {CLOSED}"
        self.close(orderly=False)
        return WorkerError(self.error)

    def close(self, orderly: bool = True) -> None:
        """Stop the workers, told to and given STOP_TIMEOUT_S when `orderly`, else at once, and leave the process
        group; later calls raise WorkerError."""
        if self.error is None:
            self.error = CLOSED
        if self._finalizer.detach() is not None:  # not stopped yet
            self.ranks.stop(orderly)


class Ranks:
    """The worker processes and their pipes, apart from the Workers handle so that its finalizer and the NCCL watcher
    can hold them without keeping the handle alive."""

    def __init__(self):
        self.processes: list[multiprocessing.Process] = []
        self.conns: list[connection.Connection] = []
        self.joined = False  # rank 0 is in the process group
        self.stopped = False

    def stop(self, orderly: bool) -> None:
        """Told to stop (None) and joined, when `orderly`; then terminated, killed if need be; then the group left."""
        self.stopped = True
        if orderly:
            for conn in self.conns:
                try:
                    conn.send(None)
                except OSError:  # already gone
                    pass
            for process in self.processes:
                process.join(STOP_TIMEOUT_S)
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(1)
            if process.is_alive():
                process.kill()
                process.join()
        for conn in self.conns:
            conn.close()
        if self.joined and dist.is_initialized():
            dist.destroy_process_group()
        self.joined = False

    def abort_on_death(self) -> None:
        """NCCL: a collective whose peer died waits on the GPU forever (one in a CUDA graph is not even seen by torch's
        watchdog), so the communicators are aborted once a worker's process ends; the waiting call then fails, and
        rank 0 raises the worker's error."""
        connection.wait([p.sentinel for p in self.processes])
        if not self.stopped:
            dist.distributed_c10d._abort_process_group()
