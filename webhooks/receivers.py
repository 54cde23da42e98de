"""Turn run status changes and approval requests into webhook deliveries.

The signals are sent after the run's transaction commits; each receiver announces the
history row that the change wrote (``webhooks.notices``), so a process killed in between
loses nothing: the notice sweep finds the row without a delivery and announces it.
"""

from __future__ import annotations

import logging
from typing import Any

from approvals.models import Approval
from approvals.signals import approval_requested
from runs.models import RunStatus
from runs.signals import run_status_changed

from .models import EventType
from .notices import announce_latest, anyone_subscribes

logger = logging.getLogger("stevora.webhooks")

RUN_EVENTS = {RunStatus.COMPLETED: EventType.RUN_COMPLETED, RunStatus.FAILED: EventType.RUN_FAILED,
              RunStatus.WAITING: EventType.RUN_WAITING}


def on_run_status_changed(sender: Any, run_id: Any, status: str, **kwargs: Any) -> None:
    event = RUN_EVENTS.get(status)  # type: ignore[call-overload]
    if event is None:
        return
    try:
        if not anyone_subscribes():
            return  # the common case: nobody listens
        announce_latest(run_id, f"run_{status}")
    except Exception:  # a notice must never break the caller that changed the run; the sweep retries
        logger.exception("could not queue %s webhooks for run %s", event, run_id)


def on_approval_requested(sender: Any, approval_id: Any, webhook_url: str = "", **kwargs: Any) -> None:
    """The step's own webhook (stored on the approval), the global URL and the subscribers."""
    try:
        if not webhook_url and not anyone_subscribes():
            return  # no step URL, no global URL (``webhook_url`` includes it), no subscriber: no delivery
        run_id = Approval.objects.values_list("run_id", flat=True).get(pk=approval_id)
        announce_latest(run_id, "approval_requested", data__approval_id=approval_id)
    except Exception:
        logger.exception("could not queue approval webhooks for approval %s", approval_id)


def connect() -> None:
    run_status_changed.connect(on_run_status_changed, dispatch_uid="webhooks-run-status")
    approval_requested.connect(on_approval_requested, dispatch_uid="webhooks-approval-requested")
