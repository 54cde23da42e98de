"""The loop that runs every periodic sweep, outside the step queue.

Sweeps (lease recovery, lost doorbells, due timers, orphaned child runs, and what the
plug-in apps register: webhook deliveries, expired events) used to be Celery tasks
that beat published into the step queue; behind a backlog of step messages they
waited, or expired unrun, and recovery stalled for minutes. Now they run in a thread
of the one process that schedules (``celery beat``, started by the ``beat_init``
signal, or ``manage.py runengine``) and reach the database directly: a backlog of any
size does not delay them. Each sweep is safe to run twice at once (guarded updates,
``SKIP LOCKED`` or an advisory lock), so a second beat costs work, not correctness.

Apps add sweeps with ``register(name, fn, every=seconds)`` from ``AppConfig.ready``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections, connection

logger = logging.getLogger("stevora.sweeper")


@dataclass
class Sweep:
    name: str
    fn: Callable[[], Any]
    every: Callable[[], float]


_sweeps: dict[str, Sweep] = {}


def register(name: str, fn: Callable[[], Any], every: float | Callable[[], float]) -> None:
    """Run ``fn`` every ``every`` seconds (a number, or a function read at start-up)."""
    interval = every if callable(every) else (lambda: float(every))
    _sweeps[name] = Sweep(name, fn, interval)


def registered() -> list[Sweep]:
    return list(_sweeps.values())


def _loop(sweep: Sweep, interval: float, stop: threading.Event) -> None:
    while not stop.wait(interval):
        try:
            close_old_connections()
            sweep.fn()
        except Exception:
            logger.exception("sweep %s failed; trying again in %gs", sweep.name, interval)
            connection.close()


def start() -> threading.Event:
    """Start one thread per registered sweep (a slow webhook receiver must not hold up lease
    recovery); set the returned event to stop them."""
    stop = threading.Event()
    for sweep in registered():
        interval = sweep.every()
        threading.Thread(target=_loop, args=(sweep, interval, stop), name=f"stevora-sweep-{sweep.name}",
                         daemon=True).start()
    return stop
