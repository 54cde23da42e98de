"""Live output of running steps (an LLM's tokens as they are written): a channel for
watchers that is *not* the database of record.

Nothing here is durable and nothing reads it back to run a step: the recorded answer of
a step is its output row, written at commit. A delta that is lost (a Redis restart, a
trimmed stream, a watcher that came late) costs a watcher some live text, never a run.

Two backends, picked like the broker:

* **Redis** (``CELERY_BROKER_URL=redis://…``): one Redis stream per run,
  ``stevora:live:<run id>``, ``XADD … MAXLEN ~ STEVORA_LIVE_MAX_PER_RUN`` and an expiry
  of ``STEVORA_LIVE_TTL_SECONDS`` renewed on every write. A stream rather than pub/sub: a
  watcher that reconnects (SSE ``Last-Event-ID``) reads on from the entry it last saw, as
  long as that entry has not been trimmed; pub/sub would drop everything sent while it
  was away. Entry ids (``1733000000000-3``) are the cursor.
* **Embedded** (no Redis): a small SQLite file of its own, ``$STEVORA_VAR_DIR/live.sqlite3``
  (WAL), that the engine process writes and the web process and the CLI read. Not the
  run database: SQLite has one writer at a time, and a token stream written into the
  database of record would queue behind — and in front of — the engine's commits. Bounded:
  rows older than the TTL are deleted, and each run keeps at most the last
  ``STEVORA_LIVE_MAX_PER_RUN`` rows. Row ids are the cursor.

A delta is ``{"cursor", "step", "attempt", "round", "call", "provider", "kind", "text"}``
(``kind``: ``text``, or ``discard`` when call ``call`` failed after part of its text went out). Writers call
:func:`publish` (never raises: a broken channel is logged once and ignored); readers call
:func:`read` with the cursor they last saw (``""``: from the oldest kept delta).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings

logger = logging.getLogger("stevora.live")

_state = threading.local()
_warned = False


def _ttl() -> int:
    return int(getattr(settings, "STEVORA", {}).get("LIVE_TTL_SECONDS", 3600))


def _max_per_run() -> int:
    return int(getattr(settings, "STEVORA", {}).get("LIVE_MAX_PER_RUN", 5000))


def _redis_url() -> str | None:
    url = str(getattr(settings, "CELERY_BROKER_URL", "") or "")
    return url if url.startswith(("redis://", "rediss://")) else None


def backend() -> str:
    return "redis" if _redis_url() else "sqlite"


# --- Redis ------------------------------------------------------------------------------


def _redis() -> Any:
    key = (os.getpid(), "redis")
    client = getattr(_state, "redis", None)
    if client is None or getattr(_state, "redis_key", None) != key:
        import redis

        client = redis.Redis.from_url(_redis_url() or "", socket_timeout=5, socket_connect_timeout=2)
        _state.redis, _state.redis_key = client, key
    return client


def _stream_key(run_id: Any) -> str:
    return f"stevora:live:{run_id}"


# --- SQLite -----------------------------------------------------------------------------


def sqlite_path() -> Path:
    return Path(getattr(settings, "VAR_DIR", "var")) / "live.sqlite3"


def _sqlite() -> sqlite3.Connection:
    key = (os.getpid(), str(sqlite_path()))
    conn = getattr(_state, "sqlite", None)
    if conn is None or getattr(_state, "sqlite_key", None) != key:
        path = sqlite_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=2.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # deltas are not worth an fsync
        conn.execute("CREATE TABLE IF NOT EXISTS delta (id INTEGER PRIMARY KEY AUTOINCREMENT, run TEXT NOT NULL, "
                     "at REAL NOT NULL, data TEXT NOT NULL)")
        conn.execute("CREATE INDEX IF NOT EXISTS delta_run ON delta (run, id)")
        _state.sqlite, _state.sqlite_key = conn, key
    return conn


def _sqlite_trim(conn: sqlite3.Connection, run: str) -> None:
    conn.execute("DELETE FROM delta WHERE at < ?", (time.time() - _ttl(),))
    conn.execute("DELETE FROM delta WHERE run = ? AND id <= (SELECT id FROM delta WHERE run = ? "
                 "ORDER BY id DESC LIMIT 1 OFFSET ?)", (run, run, _max_per_run()))


# --- the two calls ----------------------------------------------------------------------


def publish(run_id: Any, *, step: str, attempt: int, round: int, provider: str, text: str, call: int = 0,
            kind: str = "text") -> None:
    """Send one piece of live text to the run's watchers. Never raises.

    ``kind``: ``text`` (more of the answer being written by call ``call``) or ``discard``
    (that call failed after some of its text went out: watchers drop what they showed of it)."""
    global _warned
    if run_id is None or (kind == "text" and not text):
        return
    data = {"step": step, "attempt": attempt, "round": round, "call": call, "provider": provider, "kind": kind,
            "text": text}
    try:
        if _redis_url():
            client = _redis()
            pipe = client.pipeline(transaction=False)
            pipe.xadd(_stream_key(run_id), {"d": json.dumps(data)}, maxlen=_max_per_run(), approximate=True)
            pipe.expire(_stream_key(run_id), _ttl())
            pipe.execute()
        else:
            conn = _sqlite()
            cur = conn.execute("INSERT INTO delta (run, at, data) VALUES (?, ?, ?)",
                               (str(run_id), time.time(), json.dumps(data)))
            if (cur.lastrowid or 0) % 200 == 0:
                _sqlite_trim(conn, str(run_id))
    except Exception as exc:  # a watcher's channel must never fail a step
        if not _warned:
            logger.warning("live output channel unavailable (%s: %s); steps go on without it",
                           type(exc).__name__, exc)
            _warned = True


def read(run_id: Any, cursor: str = "", *, limit: int = 500, block_ms: int = 0) -> list[dict[str, Any]]:
    """Deltas of the run after ``cursor`` (``""``: from the oldest one kept), oldest first.
    ``block_ms``: on Redis, wait up to that long for the first new one."""
    try:
        if _redis_url():
            client = _redis()
            after = cursor or "0-0"
            if block_ms:
                got = client.xread({_stream_key(run_id): after}, count=limit, block=block_ms)
                entries = got[0][1] if got else []
            else:
                entries = client.xrange(_stream_key(run_id), min=f"({after}", count=limit)
            out = []
            for entry_id, fields in entries:
                data = json.loads(fields[b"d"])
                data["cursor"] = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                out.append(data)
            return out
        if not sqlite_path().exists():
            return []
        rows = _sqlite().execute("SELECT id, data FROM delta WHERE run = ? AND id > ? ORDER BY id LIMIT ?",
                                 (str(run_id), int(cursor or 0), limit)).fetchall()
        result = []
        for row_id, raw in rows:
            data = json.loads(raw)
            data["cursor"] = str(row_id)
            result.append(data)
        return result
    except Exception as exc:
        logger.debug("live output unavailable: %s", exc)
        return []


def valid_cursor(cursor: str) -> bool:
    """A cursor as this backend writes it (Redis entry id, or a row id)."""
    if not cursor:
        return True
    if _redis_url():
        head, _, tail = cursor.partition("-")
        return head.isdigit() and tail.isdigit() and len(cursor) < 45
    return cursor.isdigit() and len(cursor) < 19
