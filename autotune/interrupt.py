"""Ctrl-C at a safe point: a SIGINT is remembered and raised only where no trial is half-written.

Optuna's ask() and tell() each write several rows; a KeyboardInterrupt landing inside one would
leave a trial RUNNING forever. Inside `DeferredInterrupt`, SIGINT only sets a flag, and `check()`
raises KeyboardInterrupt between trials.
"""
from __future__ import annotations

import signal
import threading


class DeferredInterrupt:
    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self) -> "DeferredInterrupt":
        # Signal handlers can only be installed from the main thread; elsewhere Ctrl-C is not delivered anyway.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        if self.requested and exc_type is None:
            raise KeyboardInterrupt
