"""Which step a log line is about, and ``STEVORA_LOG_FORMAT=json``.

The executor (``runs.engine.executor``) sets the current step with :func:`step` around a
step's execution and commit; :class:`StepContextFilter` (on the console handler, see
settings ``LOGGING``) copies it onto every record logged meanwhile in that context — by the
engine, the handler (which runs on the handler thread in a copy of the context) or a
library it calls. :class:`JsonFormatter` writes one JSON object per line.

Plain module, no models: ``LOGGING`` names these classes before the apps are loaded.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_current: contextvars.ContextVar[tuple[str, str, int] | None] = contextvars.ContextVar("stevora_step",
                                                                                       default=None)


@contextmanager
def step(run_id: str, step_key: str, attempt: int) -> Iterator[None]:
    """Log lines written inside this block (and in contexts copied from it) name the step."""
    token = _current.set((run_id, step_key, attempt))
    try:
        yield
    finally:
        _current.reset(token)


class StepContextFilter(logging.Filter):
    """Adds ``run_id``, ``step_key`` and ``attempt`` to a record about a step (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _current.get()
        if current is not None and not hasattr(record, "run_id"):
            record.run_id, record.step_key, record.attempt = current
        # A step's own logger (StepContext.log) names the step as ``step``.
        if not hasattr(record, "step_key") and hasattr(record, "step"):
            record.step_key = record.step
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, process, thread; run_id,
    step_key and attempt when the line is about a step; exception when one is logged."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        for name in ("run_id", "step_key", "attempt"):
            val = getattr(record, name, None)
            if val is not None:
                entry[name] = val if name == "attempt" else str(val)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
