"""One heartbeat thread per worker process extends the leases of the steps it holds,
never past a step's deadline: a step that overruns its timeout stops being renewed, so
its lease runs out even if its worker hangs."""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import DateTimeField, Value
from django.db.models.functions import Least

from steps import clock
from steps.models import StepExecution, StepStatus

logger = logging.getLogger("stevora.heartbeat")


class Heartbeat:
    def __init__(self) -> None:
        self._held: dict[int, tuple[str, int, datetime | None]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._wake = threading.Event()
        self.lost: set[int] = set()

    def hold(self, step_id: int, owner: str, attempt: int, deadline: datetime | None = None) -> None:
        """Keep renewing the lease of ``step_id`` (database time ``deadline`` at the latest)."""
        with self._lock:
            self._held[step_id] = (owner, attempt, deadline)
            self.lost.discard(step_id)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                # Started lazily, and again after a fork (prefork children).
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name="stevora-heartbeat", daemon=True)
                self._thread.start()

    def release(self, step_id: int) -> None:
        with self._lock:
            self._held.pop(step_id, None)

    def _loop(self) -> None:
        lease = settings.STEVORA["LEASE_SECONDS"]
        interval = max(lease / 3.0, 0.05)
        while True:
            self._wake.wait(interval)
            with self._lock:
                held = dict(self._held)
            if not held:
                continue
            try:
                until = clock.now() + timedelta(seconds=lease)
                for step_id, (owner, attempt, deadline) in held.items():
                    value: Any = until
                    if deadline is not None and until > deadline:
                        # Never renew past the deadline (a claim's first lease may reach beyond it).
                        value = Least("lease_until", Value(deadline, output_field=DateTimeField()))
                    updated = StepExecution.objects.filter(
                        pk=step_id, status=StepStatus.RUNNING, lease_owner=owner, attempt=attempt
                    ).update(lease_until=value)
                    if not updated:
                        self.lost.add(step_id)
            except Exception:
                logger.exception("heartbeat failed; will try again")
                connection.close()


heartbeat = Heartbeat()
