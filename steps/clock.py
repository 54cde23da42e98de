"""Which clock decides: the database's.

Leases, backoffs, timers and deadlines are compared across machines whose clocks
disagree. A worker whose clock runs an hour ahead must not think a live lease has
expired, and one an hour behind must not hand out leases that expired an hour ago. So
the engine's comparisons are made in SQL against the database's ``now``, and every
time Python computes (a lease's end, a timer's ``wake_at``, a retry's ``not_before``)
comes from ``now()`` here: this machine's clock corrected by its measured offset from
the database server's (re-measured every few seconds, and at every claim for free).
On SQLite (the embedded default) the database runs inside the caller's process, so its
clock is this machine's and the offset is zero.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

_REMEASURE_SECONDS = 5.0
_state = threading.local()


def now() -> datetime:
    """The database server's current time (aware, UTC)."""
    if connection.vendor != "postgresql":
        return timezone.now()
    offset = getattr(_state, "offset", None)
    if offset is None or time.monotonic() - _state.measured > _REMEASURE_SECONDS:
        offset = measure()
    return timezone.now() + offset


def measure() -> timedelta:
    """Ask the database for its time and remember how far this machine's clock is from it."""
    with connection.cursor() as cursor:
        before = timezone.now()
        cursor.execute("SELECT statement_timestamp()")
        db_time: datetime = cursor.fetchone()[0]
        after = timezone.now()
    return observe(db_time, before + (after - before) / 2)


def observe(db_time: datetime, local_time: datetime | None = None) -> timedelta:
    """Record a database timestamp just read (e.g. a claim's ``started_at``)."""
    offset = db_time - (local_time or timezone.now())
    _state.offset = offset
    _state.measured = time.monotonic()
    return offset
