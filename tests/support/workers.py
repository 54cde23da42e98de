"""Real Celery worker subprocesses for tests (no eager mode, no in-thread worker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def subprocess_env(**overrides: str) -> dict[str, str]:
    """Environment for a subprocess that must see this test's database and broker."""
    env = dict(os.environ)
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        user = db.get("USER") or ""
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        auth = f"{user}{password}@" if user else ""
        env["DATABASE_URL"] = f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
    else:
        env.pop("DATABASE_URL", None)
        env["STEVORA_SQLITE_PATH"] = str(db["NAME"])
    env["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL if not settings.IS_EMBEDDED_BROKER else ""
    env["STEVORA_QUEUE"] = settings.CELERY_TASK_DEFAULT_QUEUE
    env["PYTHONPATH"] = str(ROOT)
    env.update(overrides)
    return env


class Proc:
    """A worker (or engine) subprocess in its own process group, so SIGKILL takes all of it."""

    def __init__(self, argv: list[str], env: dict[str, str], name: str) -> None:
        self.argv = argv
        self.env = env
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix=f"stevora-{name}-", suffix=".log")[1])
        self.ready_file = Path(tempfile.mkstemp(prefix=f"stevora-{name}-", suffix=".ready")[1])

    def start(self, timeout: float = 30.0) -> Proc:
        self.ready_file.unlink(missing_ok=True)
        env = {**self.env, "STEVORA_READY_FILE": str(self.ready_file)}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
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
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group (the worker, its pool children, an embedded beat)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def celery_worker(concurrency: int = 2, beat: bool = True, env: dict[str, str] | None = None) -> Proc:
    argv = [sys.executable, "-m", "celery", "-A", "stevora_project", "worker", "-P", "prefork",
            "-c", str(concurrency), "-Q", settings.CELERY_TASK_DEFAULT_QUEUE, "--without-mingle",
            "--without-gossip", "--without-heartbeat", "-l", "WARNING"]
    if beat:
        schedule = tempfile.mkstemp(prefix="stevora-beat-")[1]
        os.unlink(schedule)
        argv += ["-B", "-s", schedule]
    return Proc(argv, subprocess_env(**(env or {})), "worker")


def engine_process(**env: str) -> Proc:
    argv = [sys.executable, "manage.py", "runengine"]
    return Proc(argv, subprocess_env(**env), "engine")


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.05, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)
