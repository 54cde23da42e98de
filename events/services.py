"""The one door for external events: ``deliver_event`` (``send_event``, the API)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from runs.engine import transitions as engine
from runs.models import Workspace, record
from runs.services import resume_waiting_step
from steps import types as step_types
from steps.jsonvalues import json_problems, text_problem
from steps.models import StepStatus

from .matching import lock_event_name, matches
from .models import Event, EventMatch, EventWait
from .step_type import waits_for
from .triggers import start_triggered_runs

logger = logging.getLogger("stevora.events")

MAX_NAME = 200
MAX_KEY = 255
DEFAULT_RETENTION_SECONDS = 7 * 86400


class EventError(ValueError):
    """An event was refused; the message names the field."""


@dataclass
class Delivery:
    event: Event
    matched_step_ids: list[int] = field(default_factory=list)
    duplicate: bool = False
    started_runs: list[str] = field(default_factory=list)  # by event triggers (a new event only)
    trigger_problems: list[str] = field(default_factory=list)  # triggers that matched but started no run
    trigger_skipped: list[str] = field(default_factory=list)  # triggers whose rate_limit held the event back


def _workspace(workspace: Workspace | int | str | None) -> Workspace:
    if workspace is None:
        return Workspace.default()
    if isinstance(workspace, Workspace):
        return workspace
    found = (Workspace.objects.filter(pk=workspace).first() if isinstance(workspace, int)
             else Workspace.objects.filter(slug=workspace).first())
    if found is None:
        raise EventError(f"workspace: no workspace {workspace!r}")
    return found


def _validate(name: Any, key: Any, payload: Any, event_id: Any) -> tuple[str, str, Any, str | None]:
    if not isinstance(name, str) or not name.strip():
        raise EventError("name: must be a non-empty string")
    if len(name) > MAX_NAME:
        raise EventError(f"name: must be at most {MAX_NAME} characters")
    if key is None:
        key = ""
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise EventError("key: must be a string or an integer")
    key = str(key)
    if len(key) > MAX_KEY:
        raise EventError(f"key: must be at most {MAX_KEY} characters")
    if payload is None:
        payload = {}
    if event_id is not None:
        if not isinstance(event_id, str) or not event_id.strip() or len(event_id) > 255:
            raise EventError("event_id: must be a non-empty string of at most 255 characters")
    for field_name, text in (("name", name), ("key", key), ("event_id", event_id)):
        problem = text_problem(text) if text else None
        if problem:
            raise EventError(f"{field_name}: {problem}")
    # The same checks as run input (NUL, lone surrogates, depth, 64-bit integers), first problem named.
    hostile = json_problems(payload, "payload")
    if hostile:
        raise EventError(f"{hostile[0][0]}: {hostile[0][1]}")
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EventError(f"payload: must be JSON-serialisable ({exc})") from None
    return name, key, payload, event_id


def retention_seconds() -> float:
    return float(settings.STEVORA.get("EVENT_RETENTION_SECONDS", DEFAULT_RETENTION_SECONDS))


def deliver_event(name: str, *, key: Any = None, payload: Any = None, event_id: str | None = None,
                  workspace: Workspace | int | str | None = None) -> Delivery:
    """Store an event, start the runs its triggers declare, and complete every waiting step it
    satisfies (its output: the event).

    Two transactions: the first stores the event and records which waits it claims
    (``EventMatch``), the second resumes them. The same ``event_id`` again is a
    duplicate: nothing new is stored or matched, but claims a crash left unresumed
    are resumed now.
    """
    name, key, payload, event_id = _validate(name, key, payload, event_id)
    ws = _workspace(workspace)
    now = timezone.now()
    with transaction.atomic():
        lock_event_name(ws.pk, name)
        existing = Event.objects.filter(workspace=ws, event_id=event_id).first() if event_id else None
        duplicate = existing is not None
        if existing is None:
            try:
                with transaction.atomic():
                    event = Event.objects.create(workspace=ws, name=name, key=key, payload=payload,
                                                 event_id=event_id,
                                                 expires_at=now + timedelta(seconds=retention_seconds()))
            except IntegrityError:  # the same id delivered concurrently under another name
                event = Event.objects.get(workspace=ws, event_id=event_id)
                duplicate = True
        else:
            event = existing
        claims: list[tuple[int, dict[str, Any]]]
        started: list[str] = []
        problems: list[str] = []
        skipped: list[str] = []
        if duplicate:
            output = event.as_output()
            claims = [(step_id, output) for step_id in
                      EventMatch.objects.filter(event=event, step__status=StepStatus.WAITING)
                      .values_list("step_id", flat=True)]
        else:
            claims = _claim_waits(event)
            # In the transaction that stores the event, so its runs exist exactly when it does;
            # after the claims, so a run it starts does not take it for a wait of its own.
            started, problems, skipped = start_triggered_runs(event)
    completed = []
    for step_id, step_output in claims:
        with transaction.atomic():
            if resume_waiting_step(step_id, step_types.Complete(step_output), actor=f"event:{name}",
                                   expected_type="external_event"):
                EventWait.objects.filter(step_id=step_id).delete()
                completed.append(step_id)
    return Delivery(event, completed, duplicate, started, problems, skipped)


def purge_expired_events(now: Any = None) -> int:
    """Delete events past their retention (``expires_at``); their matches go with them.

    The run history keeps an ``event_matched`` row for every event a step consumed.
    """
    deleted, _ = Event.objects.filter(expires_at__lt=now or timezone.now()).delete()
    return int(deleted)


def _claim_waits(event: Event) -> list[tuple[int, dict[str, Any]]]:
    output = event.as_output()
    claims: list[tuple[int, dict[str, Any]]] = []
    candidates = (waits_for(event.workspace_id, event.name, event.key)
                  .select_related("run", "run__workflow", "step").order_by("run_id", "id"))
    for wait in candidates:
        if wait.step.status != StepStatus.WAITING:
            continue
        earlier = EventMatch.objects.filter(step_id=wait.step_id).select_related("event").first()
        if earlier is not None:
            # Claimed by a delivery that crashed before resuming it: finish that claim now.
            claims.append((wait.step_id, earlier.event.as_output()))
            continue
        if wait.match and not matches(wait.match, output, engine.template_context(wait.run, wait.step)):
            continue
        EventMatch.objects.create(event=event, step=wait.step, run=wait.run, step_name=wait.step.name)
        record(wait.run_id, "event_matched", step_key=wait.step.key, actor=f"event:{event.name}",
               message=f"event {event.name}[{event.key}] #{event.pk} matched",
               data={"event": event.pk, "name": event.name, "key": event.key, "event_id": event.event_id})
        claims.append((wait.step_id, output))
    return claims
