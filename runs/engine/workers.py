"""The worker registry: which engine processes are alive, and which handlers each has.

Every process that runs steps (a Celery pool process, or ``runengine``) registers a
``Worker`` row and holds a *liveness lock* for as long as it lives:

- on PostgreSQL, a session-level advisory lock on a connection of its own (the two-key
  form, ``NAMESPACE`` and the row's ``lock_key``): when the process dies, the kernel closes
  its socket, the server ends the session and drops the lock;
- on SQLite (one machine), a ``flock`` on ``STEVORA_VAR_DIR/workers/<key>.lock``, which
  the kernel drops when the process dies.

``reap`` (a sweep, every ``STEVORA_WORKER_CHECK_SECONDS``) finds registered workers whose
lock is gone, marks them dead and recovers the steps they held at once — a SIGKILLed
worker costs about a second instead of a lease. Leases stay the backstop for what a lock
cannot see: a partitioned or hung process keeps its lock but stops renewing its leases.

A PostgreSQL restart drops every lock without any process dying: a lock taken before the
server's current start (``lock_epoch``) is not evidence of death; its worker takes it
again within a heartbeat, and only the lease decides meanwhile.

The registry also answers what operators and the CLI ask: is any engine running, and does
any live worker have handler X (a task step whose handler no live worker has waits for one,
``park_for_handler`` / ``release_handler_waits``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F

from runs.models import Run, RunStatus, Worker
from steps import clock
from steps.handlers import registry as handler_registry
from steps.models import StepExecution, StepStatus

from . import transitions as t
from .effects import Effects
from .recovery import recover_expired_leases

logger = logging.getLogger("stevora.workers")

NAMESPACE = 0x5354  # the first key of every liveness lock
_KEY_SPACE = 2**31 - 1
HOST = socket.gethostname()


@dataclass
class _Registration:
    pid: int
    row_id: int
    name: str
    lock_key: int
    holder: Any  # the psycopg connection or the open lock file
    kind: str


_lock = threading.Lock()
_me: _Registration | None = None
# What a forked child inherits from its parent's registration: kept, never closed or
# garbage-collected (closing the parent's connection in the child would end the parent's
# session and with it the parent's lock).
_inherited: list[Any] = []


def process_name() -> str:
    """The prefix of every ``lease_owner`` this process writes (``host:pid``)."""
    return f"{HOST}:{os.getpid()}"


def heartbeat_seconds() -> float:
    return float(settings.STEVORA["WORKER_HEARTBEAT_SECONDS"])


# --- the liveness lock ------------------------------------------------------------------------


def _pg_connect() -> Any:
    raw = connection.get_new_connection(connection.get_connection_params())
    raw.autocommit = True
    return raw


def _pg_take(key: int | None) -> tuple[Any, int, str]:
    """A new connection holding the lock (``key``, or a free random one)."""
    raw = _pg_connect()
    with raw.cursor() as cur:
        for _ in range(100):
            candidate = key if key is not None else random.randint(1, _KEY_SPACE)
            cur.execute("SELECT pg_try_advisory_lock(%s, %s), pg_postmaster_start_time()::text",
                        [NAMESPACE, candidate])
            taken, epoch = cur.fetchone()
            if taken:
                return raw, candidate, epoch
            key = None  # held by a live worker: draw another
    raw.close()
    raise RuntimeError("could not take a worker liveness lock")


def _lock_dir() -> Path:
    path = Path(settings.VAR_DIR) / "workers"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_take(key: int | None) -> tuple[Any, int, str]:
    for _ in range(100):
        candidate = key if key is not None else random.randint(1, _KEY_SPACE)
        handle = open(_lock_dir() / f"{candidate}.lock", "a+")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            key = None
            continue
        return handle, candidate, ""
    raise RuntimeError("could not take a worker liveness lock")


def _take(key: int | None = None) -> tuple[Any, int, str]:
    return _pg_take(key) if connection.vendor == "postgresql" else _file_take(key)


def _holds(holder: Any) -> bool:
    """Our own lock is still ours (the connection is up; a file lock cannot be lost)."""
    if connection.vendor != "postgresql":
        return True
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT 1")
        return True
    except Exception:
        return False


def _live_keys(keys: list[int]) -> set[int]:
    """Which of these lock keys are held now."""
    if not keys:
        return set()
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute(
                "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
                "AND objsubid = 2 AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                [NAMESPACE],
            )
            held = {int(r[0]) for r in cur.fetchall()}
        return held & set(keys)
    live = set()
    for key in keys:
        path = _lock_dir() / f"{key}.lock"
        if not path.exists():
            continue
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                live.add(key)  # someone holds it
            else:
                fcntl.flock(handle, fcntl.LOCK_UN)
    return live


def _current_epoch() -> str:
    if connection.vendor != "postgresql":
        return ""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_postmaster_start_time()::text")
        return str(cur.fetchone()[0])


# --- registering ------------------------------------------------------------------------------


def register(kind: str) -> int:
    """Register this process (idempotent per process; again after a fork). Returns the row id."""
    global _me
    with _lock:
        if _me is not None and _me.pid == os.getpid():
            return _me.row_id
        if _me is not None:  # inherited across fork: the parent's, not ours
            _inherited.append(_me.holder)
            _me = None
        holder, key, epoch = _take()
        now = clock.now()
        row = Worker.objects.create(
            name=process_name(), hostname=HOST, pid=os.getpid(), kind=kind,
            queue=getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", ""), handlers=handler_registry.names(),
            lock_key=key, lock_epoch=epoch, started_at=now, seen_at=now,
        )
        _me = _Registration(os.getpid(), row.pk, row.name, key, holder, kind)
    threading.Thread(target=_beat, args=(row.pk,), name="stevora-worker-beat", daemon=True).start()
    logger.info("registered as worker %s (%s)", row.name, kind)
    return row.pk


def registered() -> bool:
    return _me is not None and _me.pid == os.getpid()


def unregister(reason: str = "shutdown") -> None:
    """A clean stop: the row says so, the lock goes."""
    global _me
    with _lock:
        me = _me
        if me is None or me.pid != os.getpid():
            return
        _me = None
    try:
        Worker.objects.filter(pk=me.row_id, stopped_at__isnull=True).update(stopped_at=clock.now(),
                                                                             stop_reason=reason)
    finally:
        try:
            me.holder.close()
        except Exception:
            pass


def _beat(row_id: int) -> None:
    """Say we are here; take the lock again if the database lost it (a server restart)."""
    while True:
        time.sleep(heartbeat_seconds())
        me = _me
        if me is None or me.row_id != row_id or me.pid != os.getpid():
            return
        try:
            # Alive, whatever the row says (a reaper that saw the lock gone while the database
            # restarted or a proxy cut the connection marked it dead; its steps were recovered
            # and this worker's late commits are fenced out).
            fields: dict[str, Any] = {"seen_at": clock.now(), "handlers": handler_registry.names(),
                                      "stopped_at": None, "stop_reason": ""}
            if not _holds(me.holder):
                try:
                    me.holder.close()
                except Exception:
                    pass
                holder, key, epoch = _take(me.lock_key)
                me.holder, me.lock_key = holder, key
                fields.update(lock_key=key, lock_epoch=epoch)
                logger.warning("worker %s took its liveness lock again", me.name)
            if not Worker.objects.filter(pk=row_id).update(**fields):
                # The row is gone (deleted by hand, a test's flush): write it again.
                row = {"pk": row_id, "name": me.name, "hostname": HOST, "pid": me.pid, "kind": me.kind,
                       "queue": getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", ""), "lock_key": me.lock_key,
                       "lock_epoch": _current_epoch(), "started_at": fields["seen_at"]}
                Worker.objects.create(**{**row, **fields})
        except Exception:
            logger.exception("worker heartbeat failed; will try again")
            connection.close()


# --- who is alive -----------------------------------------------------------------------------


def live_workers() -> list[Worker]:
    rows = list(Worker.objects.filter(stopped_at__isnull=True).order_by("id"))
    keys = _live_keys([w.lock_key for w in rows])
    return [w for w in rows if w.lock_key in keys]


def with_handler(name: str, *, besides_me: bool = True) -> list[Worker]:
    me = process_name()
    return [w for w in live_workers() if name in (w.handlers or []) and not (besides_me and w.name == me)]


def reap() -> dict[str, int]:
    """Mark workers whose lock is gone as dead and recover their steps now; release task
    steps waiting for a handler some live worker now has."""
    rows = list(Worker.objects.filter(stopped_at__isnull=True).values("id", "name", "lock_key", "lock_epoch",
                                                                      "seen_at"))
    dead: set[str] = set()
    if rows:
        live = _live_keys([r["lock_key"] for r in rows])
        epoch = _current_epoch()
        stale = clock.now() - timedelta(seconds=max(3 * heartbeat_seconds(), float(settings.STEVORA["LEASE_SECONDS"])))
        for r in rows:
            if r["lock_key"] in live:
                continue
            if r["lock_epoch"] != epoch and r["seen_at"] > stale:
                continue  # the server restarted since it locked: it will lock again
            if Worker.objects.filter(pk=r["id"], stopped_at__isnull=True).update(stopped_at=clock.now(),
                                                                                 stop_reason="died"):
                dead.add(r["name"])
                held = StepExecution.objects.filter(status=StepStatus.RUNNING,
                                                    lease_owner__startswith=f"{r['name']}:")
                expired = held.update(lease_until=clock.now() - timedelta(seconds=1))
                logger.warning("worker %s died; recovering %d step(s) it held", r["name"], expired)
    recovered = recover_expired_leases(frozenset(dead)) if dead else 0
    released = release_handler_waits()
    if random.random() < 0.01:
        Worker.objects.filter(stopped_at__lt=clock.now() - timedelta(days=1)).delete()
    return {"dead": len(dead), "recovered": recovered, "released": released}


# --- steps whose handler no live worker has ---------------------------------------------------


NEEDS_HANDLER = "needs_handler"


def handler_message(name: str) -> str:
    known = handler_registry.names()
    return (f"no live worker has handler {name!r}: add the module that defines it to STEVORA_HANDLER_MODULES "
            f"in the workers' environment (this worker has: {', '.join(known) or 'none'})")


def park_for_handler(row: StepExecution, owner: str, name: str) -> None:
    """Give the claim back and wait (holding no worker) until a live worker has ``name``."""
    with transaction.atomic():
        run = t.lock_run(row.run_id)
        state = {**(row.state or {}), NEEDS_HANDLER: name}
        if StepExecution.objects.filter(pk=row.pk, status=StepStatus.RUNNING, lease_owner=owner,
                                        attempt=row.attempt).update(
                status=StepStatus.WAITING, lease_owner="", lease_until=None, attempt=F("attempt") - 1,
                state=state, wake_at=None) != 1:
            return
        fx = Effects()
        fx.event(run.pk, "step_waiting_for_worker", row.key, message=handler_message(name),
                 data={"handler": name, "worker": owner})
        t.refresh_run_status(run, fx)
        fx.flush()


def release_handler_waits() -> int:
    """Task steps parked for a handler that a live worker now has go back to ready."""
    # One table, through its partial index (a join here would lock two tables every second).
    parked = [(pk, run_id, state) for pk, run_id, state in StepExecution.objects.filter(
        status=StepStatus.WAITING, type="task").values_list("id", "run_id", "state")[:500]
        if isinstance(state, dict) and state.get(NEEDS_HANDLER)]
    if not parked:
        return 0
    available = {h for w in live_workers() for h in (w.handlers or [])}
    released = 0
    for pk, run_id, state in parked:
        name = state[NEEDS_HANDLER]
        if name not in available:
            continue
        with transaction.atomic():
            run: Run = t.lock_run(run_id)
            if run.status not in (RunStatus.RUNNING, RunStatus.WAITING):
                continue  # paused (resume releases it later) or ended
            rest = {k: v for k, v in state.items() if k != NEEDS_HANDLER}
            fx = Effects()
            row = StepExecution.objects.only("key", "type", "concurrency_key", "priority").get(pk=pk)
            # Back to ready, or queued when it has a concurrency key (parking freed its slot).
            if t.back_to_ready(run, row, fx, (StepStatus.WAITING,), state=rest) is None:
                continue
            fx.event(run.pk, "step_ready", row.key, message=f"a live worker has handler {name!r}",
                     data={"handler": name})
            t.refresh_run_status(run, fx)
            fx.flush()
            released += 1
    return released


__all__ = ["NAMESPACE", "live_workers", "park_for_handler", "process_name", "reap", "register",
           "release_handler_waits", "unregister", "with_handler"]
