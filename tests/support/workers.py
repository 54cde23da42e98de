"""Real Celery worker subprocesses for tests (no eager mode, no in-thread worker)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

from django.conf import settings
from django.db import connection

from .procs import ROOT, Proc

__all__ = ["ROOT", "Proc", "celery_worker", "engine_process", "subprocess_env", "wait_until"]


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
