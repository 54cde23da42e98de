from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections, connection

from runs.reconciler import sweep
from steps.dispatch import mark_engine_process
from stevora_project.celery import app

logger = logging.getLogger("stevora.engine")


def reconcile_forever(interval: float, stop: threading.Event) -> None:
    """The reconciler's sweep every ``interval``; what beat schedules besides it (the purge
    of expired external events) when it is due."""
    purge_every = settings.STEVORA["EVENT_PURGE_SECONDS"]
    next_purge = time.monotonic() + purge_every
    while not stop.wait(interval):
        try:
            close_old_connections()
            sweep()
            if apps.is_installed("events") and time.monotonic() >= next_purge:
                from events.services import purge_expired_events

                next_purge = time.monotonic() + purge_every
                purge_expired_events()
        except Exception:
            logger.exception("reconciler sweep failed; trying again")
            connection.close()


class Command(BaseCommand):
    help = ("Run the engine in one process: a Celery worker, the reconciler and the timers. "
            "The embedded default (no broker configured); also handy on one machine with Redis.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=None,
                            help="worker processes (prefork) when a broker is configured; default 2")
        parser.add_argument("--loglevel", default="WARNING", type=str.upper,
                            choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                            help="how much the worker logs (default: WARNING; INFO shows every task)")

    def handle(self, *args: Any, **options: Any) -> None:
        mark_engine_process()
        stop = threading.Event()
        interval = settings.STEVORA["RECONCILE_SECONDS"]
        if settings.IS_EMBEDDED_BROKER:
            # The in-memory broker lives in this process; it serves a single solo worker, so
            # step timeouts (SIGALRM) work and SQLite sees one writer at a time from here.
            interval = min(interval, 0.5)
            pool, concurrency = "solo", 1
        else:
            pool, concurrency = "prefork", options["concurrency"] or 2
        thread = threading.Thread(target=reconcile_forever, args=(interval, stop), name="stevora-reconciler",
                                  daemon=True)
        thread.start()
        if apps.is_installed("webhooks"):
            # Webhook deliveries due (their own thread: a slow receiver must not hold up the reconciler).
            from webhooks.delivery import sweep_forever

            threading.Thread(target=sweep_forever, args=(stop,), name="stevora-webhooks", daemon=True).start()
        self.stderr.write(
            f"stevora engine: broker {'embedded (memory)' if settings.IS_EMBEDDED_BROKER else 'redis'}, "
            f"database {connection.vendor}, pool {pool}×{concurrency}, reconcile every {interval}s"
        )
        connection.close()
        worker = app.Worker(pool=pool, concurrency=concurrency, loglevel=options["loglevel"],
                            without_mingle=True, without_gossip=True, without_heartbeat=True,
                            queues=[settings.CELERY_TASK_DEFAULT_QUEUE], quiet=True)
        try:
            worker.start()
        finally:
            stop.set()
