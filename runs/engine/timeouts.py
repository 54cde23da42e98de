"""A step's deadline holds whatever its handler does.

The handler runs on a worker thread of this process (one, reused from step to step,
so it keeps its database connection); the thread that claimed the step waits for it
until the deadline. At the deadline it raises ``StepTimeout`` inside the handler's
thread and waits a short grace for it to stop. A handler that still runs — one that
catches every exception in a loop, or is stuck in C code — is abandoned: its thread
is left to finish or not (it is a daemon and holds no lease), the next step gets a
fresh thread, and the attempt is recorded as timed out, so its late result can only
reach a fence that no longer matches. The heartbeat stops extending the lease at the
deadline (``heartbeat.hold(..., deadline)``), so a process that dies meanwhile gives
the step back soon after.

This works on every pool: prefork, threads and the embedded engine's solo worker,
where a hung step used to block every other run.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from django.db import connections

from steps.handlers import RetryableError

logger = logging.getLogger("stevora.timeouts")


class StepTimeout(RetryableError):
    """The step ran longer than its ``timeout_seconds`` (or ``STEVORA_MAX_STEP_SECONDS``)."""


class _Job:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        # A bare lock, held until the job is done, rather than an Event: an Event's wait
        # builds a Condition and a fresh lock each time, and this hand-over happens at every
        # step (half the CPU of the hand-over, measured: docs/benchmarks.md).
        self._done = threading.Lock()
        self._done.acquire()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the waiting thread as it is
            self.error = exc
        finally:
            self._done.release()

    def wait(self, seconds: float) -> bool:
        """True once the job is done (only one thread waits for a job)."""
        return self._done.acquire(timeout=max(seconds, 0.0))


class _Runner(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="stevora-handler", daemon=True)
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.abandoned = False

    def run(self) -> None:
        try:
            while not self.abandoned:
                self.jobs.get().run()
        finally:
            connections.close_all()  # this thread's connections


_runner: _Runner | None = None
_runner_pid = 0
_lock = threading.Lock()


def _current_runner() -> _Runner:
    global _runner, _runner_pid
    with _lock:
        if _runner is None or _runner_pid != os.getpid() or not _runner.is_alive() or _runner.abandoned:
            # Started lazily, again after a fork (prefork children), and after an abandonment.
            _runner, _runner_pid = _Runner(), os.getpid()
            _runner.start()
        return _runner


def _raise_in(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    ident = thread.ident
    if ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))


def run_with_deadline(fn: Callable[[], Any], seconds: float, grace: float) -> Any:
    """``fn()`` on the handler thread; StepTimeout once ``seconds`` have passed (+ ``grace``)."""
    runner = _current_runner()
    job = _Job(fn)
    runner.jobs.put(job)
    if job.wait(seconds):
        if job.error is not None:
            raise job.error
        return job.result
    _raise_in(runner, StepTimeout)
    if job.wait(grace):
        # It stopped when told to (or finished just then): its result is late all the same.
        raise StepTimeout(f"step exceeded its timeout of {seconds:g}s")
    runner.abandoned = True
    with _lock:
        global _runner
        if _runner is runner:
            _runner = None
    logger.error("a handler ignored its timeout of %gs; its thread is abandoned and the step given up", seconds)
    raise StepTimeout(f"step exceeded its timeout of {seconds:g}s and did not stop when told to; "
                      "it was abandoned and its result will be discarded")
