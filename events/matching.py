"""Shared pieces of event matching: the per-name lock and the ``match`` expression."""

from __future__ import annotations

import logging
from typing import Any

from django.db import connection

from steps.templating import TemplateProblem, evaluate

logger = logging.getLogger("stevora.events")

_LOCK_CLASS = 0x5E7E


def lock_event_name(workspace_id: int, name: str) -> None:
    """Serialise a delivery and a wait starting for the same event name (PostgreSQL).

    Without it, a wait that starts while an event is being delivered could miss it:
    the wait looks for early events before the delivery commits, and the delivery
    looks for waits before the wait commits. Held to the end of the transaction.
    A delivery takes it before any run lock and releases it (commit) before resuming
    runs, so it never sits between two run locks. SQLite serialises writers anyway.
    """
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [_LOCK_CLASS, f"{workspace_id}:{name}"])


def matches(expression: str, event: dict[str, Any], context: dict[str, Any]) -> bool:
    """Evaluate a step's ``match`` over ``event`` and the run; an error counts as no match."""
    if not expression:
        return True
    try:
        return bool(evaluate(expression, {**context, "event": event}))
    except TemplateProblem as exc:
        logger.warning("match expression %r failed for event %s: %s", expression, event.get("id"), exc)
        return False
