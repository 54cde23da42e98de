"""Subprocesses that tests and benchmarks start, each in its own process group.

Django-free, so a benchmark driver can use it before (or without) setting Django up.
A ``Proc`` waits until the child touches ``STEVORA_READY_FILE`` (workers once they
consume, beat once it starts: ``stevora_project.celery``), and SIGKILL takes its whole
group: the worker, its pool children, an embedded beat.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], name: str) -> None:
        self.argv = argv
        self.env = env
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        fd, log_path = tempfile.mkstemp(prefix=f"stevora-{name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_path)
        fd, ready_file = tempfile.mkstemp(prefix=f"stevora-{name}-", suffix=".ready")
        os.close(fd)
        self.ready_file = Path(ready_file)

    def start(self, timeout: float = 30.0) -> Proc:
        self.ready_file.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         env={**self.env, "STEVORA_READY_FILE": str(self.ready_file)},
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        """The end of what the process printed."""
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def owns(self, pid: int) -> bool:
        """Is ``pid`` this process or one of its group (a pool child)?"""
        try:
            return self.alive() and os.getpgid(pid) == self.pid
        except ProcessLookupError:
            return False

    def kill(self) -> None:
        """SIGKILL the whole process group."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the group (a warm shutdown); SIGKILL it if it has not gone after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.kill()
