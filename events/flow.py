"""Flow control of event triggers: ``debounce`` and ``rate_limit`` (as Inngest has them).

``rate_limit: {limit: N, period_seconds: P, key: …}``: a trigger starts at most N runs per
key in any P seconds. The count is of ``EventTriggering`` rows (``started``) inside the
period, taken under the delivery's per-event-name lock (``lock_event_name``; SQLite
serialises writers anyway), so two deliveries cannot both take the last place. An event
over the limit starts nothing: its ``EventTriggering`` says ``skipped`` and why.

``debounce: {period_seconds: P, key: …, timeout_seconds: T}``: a burst of events starts
one run, P seconds after the burst's last event, with that event. A burst is a
``PendingDebounce`` row per trigger and key, written (or pushed back, pointing at the new
event) in the transaction that stores each event. The sweep (``fire_due_debounces``, the
beat's or ``runengine``'s sweeper, every ``STEVORA_SCHEDULE_SWEEP_SECONDS``) deletes a due
row with a conditional DELETE (still due, still the same event) and starts its run in the
same transaction, with an idempotency key derived from the event: exactly once, however
many sweeps race, and a crash before the commit leaves the row for the next sweep. With
``timeout_seconds`` a burst that never goes quiet still starts a run T seconds after its
first event (then a new burst begins).

Both keys are templates over ``event`` (its ``payload``, ``key``, ``name``…); without one,
the trigger has one debounce / one limit.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F

from runs.errors import StartError
from runs.models import record
from runs.services import start_run
from steps import clock
from steps.templating import TemplateProblem, render_value

from .models import Event, EventTrigger, EventTriggering, PendingDebounce, TriggerOutcome

logger = logging.getLogger("stevora.events")

SWEEP_BATCH = 100


def run_input(trigger: EventTrigger, output: dict[str, Any]) -> Any:
    if trigger.input is None:
        payload = output["payload"]
        if not isinstance(payload, dict):
            raise ValueError(f"the run's input is the event's payload, which must be a JSON object, "
                             f"got {type(payload).__name__} (or give the trigger an input:)")
        return payload
    return render_value(trigger.input, {"event": output})  # start_run checks it against the input schema


def flow_key(options: dict[str, Any] | None, output: dict[str, Any]) -> str:
    """The rendered ``key`` of a debounce / rate_limit ("" without one); TemplateProblem if it fails."""
    template = (options or {}).get("key")
    if not template:
        return ""
    value = render_value(template, {"event": output})
    text = value if isinstance(value, str) else str(value)
    if len(text) > 500:
        text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


def note(event: Event, trigger: EventTrigger, key: str, outcome: str, *, reason: str = "", run_id: str = "",
         at: datetime | None = None) -> None:
    """What this trigger did with this event (once per event and trigger)."""
    EventTriggering.objects.update_or_create(
        event=event, workflow_name=trigger.workflow_name, trigger_index=trigger.trigger_index,
        defaults=dict(workspace_id=event.workspace_id, flow_key=key, outcome=outcome, reason=reason,
                      run_id=run_id, at=at or clock.now()))


def rate_limited(event: Event, trigger: EventTrigger, key: str, now: datetime) -> str | None:
    """Why this event may not start a run (its trigger's rate_limit is reached), or None."""
    limit = trigger.rate_limit
    if not limit:
        return None
    period = float(limit["period_seconds"])
    started = EventTriggering.objects.filter(
        workspace_id=event.workspace_id, workflow_name=trigger.workflow_name, trigger_index=trigger.trigger_index,
        flow_key=key, outcome=TriggerOutcome.STARTED, at__gt=now - timedelta(seconds=period)).count()
    if started < int(limit["limit"]):
        return None
    shown = f" for key {key!r}" if key else ""
    return (f"rate_limit: {started} run(s) already started{shown} in the last {period:g}s "
            f"(limit {limit['limit']})")


def debounce(event: Event, trigger: EventTrigger, key: str, now: datetime) -> None:
    """Start or push back the burst of (trigger, key) with this event (in the delivery's transaction)."""
    options = trigger.debounce or {}
    period = timedelta(seconds=float(options["period_seconds"]))
    timeout = options.get("timeout_seconds")
    where = dict(workspace_id=event.workspace_id, workflow_name=trigger.workflow_name,
                 trigger_index=trigger.trigger_index, flow_key=key)
    for _ in range(3):
        pending = PendingDebounce.objects.filter(**where).values("pk", "first_at").first()
        if pending is not None:
            fire_at = now + period
            if timeout is not None:
                fire_at = min(fire_at, pending["first_at"] + timedelta(seconds=float(timeout)))
            # Zero rows: the sweep fired it meanwhile; this event begins a new burst.
            if PendingDebounce.objects.filter(pk=pending["pk"]).update(
                    event=event, fire_at=fire_at, events=F("events") + 1) == 1:
                break
        try:
            with transaction.atomic():
                PendingDebounce.objects.create(**where, event=event, first_at=now, fire_at=now + period)
            break
        except IntegrityError:
            continue  # another delivery began the burst: push it back instead
    note(event, trigger, key, TriggerOutcome.DEBOUNCED, reason="waiting for the burst to end", at=now)


def fire_due_debounces() -> int:
    """The sweep: start the run of every burst whose quiet period is over (database clock)."""
    now = clock.now()
    due = list(PendingDebounce.objects.filter(fire_at__lte=now).order_by("fire_at")
               .values_list("pk", flat=True)[:SWEEP_BATCH])
    return sum(fire_debounce(pk) for pk in due)


def fire_debounce(pk: int) -> int:
    with transaction.atomic():
        now = clock.now()
        qs = PendingDebounce.objects.filter(pk=pk, fire_at__lte=now)
        if connection.vendor == "postgresql":
            qs = qs.select_for_update(skip_locked=True)  # another sweep has it
        pending = qs.select_related("event").first()
        if pending is None:
            return 0
        # The guard: only the sweep that removes the row as it read it starts the run; a delivery
        # that pushed it back meanwhile wins.
        if PendingDebounce.objects.filter(pk=pk, fire_at=pending.fire_at, event_id=pending.event_id).delete()[0] != 1:
            return 0
        trigger = EventTrigger.objects.filter(workspace_id=pending.workspace_id, workflow_name=pending.workflow_name,
                                              trigger_index=pending.trigger_index).first()
        event = pending.event
        if trigger is None or not trigger.debounce:
            reason = "the workflow's new version no longer debounces this trigger"
            logger.warning("debounce of %s triggers[%s] dropped: %s", pending.workflow_name,
                           pending.trigger_index, reason)
            EventTriggering.objects.filter(event=event, workflow_name=pending.workflow_name,
                                           trigger_index=pending.trigger_index).update(
                outcome=TriggerOutcome.SKIPPED, reason=reason)
            return 0
        output = event.as_output()
        ident = event.event_id if event.event_id is not None else f"#{event.pk}"
        idem = f"debounce:{trigger.trigger_index}:{ident}"
        if len(idem) > 255:
            idem = f"debounce:{trigger.trigger_index}:sha256:{hashlib.sha256(ident.encode()).hexdigest()}"
        actor = f"event:{event.name}"
        try:
            with transaction.atomic():
                result = start_run(trigger.workflow_name, run_input(trigger, output), workspace=event.workspace_id,
                                   idempotency_key=idem, actor=actor)
                if result.created:
                    record(result.run.pk, "run_triggered", actor=actor,
                           message=f"started by trigger {trigger.trigger_index} after a debounced burst of "
                                   f"{pending.events} event(s), the last {event.name}[{event.key}] #{event.pk}",
                           data={"trigger": trigger.trigger_index, "kind": "event", "event": event.pk,
                                 "event_id": event.event_id, "name": event.name, "key": event.key,
                                 "debounced_events": pending.events, "debounce_key": pending.flow_key})
        except (StartError, TemplateProblem, ValueError) as exc:
            logger.warning("debounced event %s #%s started no run of %s: %s", event.name, event.pk,
                           trigger.workflow_name, exc)
            note(event, trigger, pending.flow_key, TriggerOutcome.SKIPPED, reason=f"the run was refused: {exc}",
                 at=now)
            return 0
        note(event, trigger, pending.flow_key, TriggerOutcome.STARTED, run_id=str(result.run.pk), at=now)
    return 1 if result.created else 0
