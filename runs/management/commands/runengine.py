from __future__ import annotations

import logging
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection

from runs.engine import sweeper
from runs.engine.dispatch import mark_engine_process

logger = logging.getLogger("stevora.engine")


class Command(BaseCommand):
    help = ("Run the engine in one process: a Celery worker plus the sweeps beat would host (lease recovery, "
            "lost doorbells, timers, child runs, webhook deliveries, the event purge). The embedded default "
            "(no broker configured); also handy on one machine with Redis.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=None,
                            help="worker processes (prefork) when a broker is configured; default 2")
        parser.add_argument("--loglevel", default="WARNING", type=str.upper,
                            choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                            help="how much the worker logs (default: WARNING; INFO shows every task)")

    def handle(self, *args: Any, **options: Any) -> None:
        mark_engine_process()
        if settings.IS_EMBEDDED_BROKER:
            # The in-memory broker lives in this process and serves one solo worker; step
            # deadlines hold on it too (runs.engine.timeouts), so a hung step blocks nothing
            # past its timeout.
            pool, concurrency = "solo", 1
        else:
            pool, concurrency = "prefork", options["concurrency"] or 2
        stop = sweeper.start()
        self.stderr.write(
            f"stevora engine: broker {'embedded (memory)' if settings.IS_EMBEDDED_BROKER else settings.BROKER_SCHEME}, "
            f"database {connection.vendor}, pool {pool}×{concurrency}, "
            f"sweeps: {', '.join(f'{s.name} every {s.every():g}s' for s in sweeper.registered())}"
        )
        connection.close()
        worker = current_app.Worker(pool=pool, concurrency=concurrency, loglevel=options["loglevel"],
                                    without_mingle=True, without_gossip=True, without_heartbeat=True,
                                    queues=[settings.CELERY_TASK_DEFAULT_QUEUE], quiet=True)
        try:
            worker.start()
        finally:
            stop.set()
