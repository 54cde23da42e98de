"""Event triggers: ``triggers: [{event: NAME, key:, if:, input:}]`` start a run per event.

A delivered event starts one run per matching trigger in the transaction that stores
the event (``services.deliver_event``), so an event exists exactly when its runs do.
The run's idempotency key is derived from the event id and the trigger: a duplicate
delivery (the same id) starts nothing new, also when two deliveries race.

A trigger with ``debounce`` or ``rate_limit`` goes through ``events.flow``: what it did
with each event (started, debounced, skipped and why) is an ``EventTriggering`` row.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django.db import transaction
from django.db.models import Q

from runs.definitions import DefinitionError, spec_for
from runs.errors import StartError
from runs.models import Workflow, record
from runs.services import start_run
from steps import clock
from steps.templating import TemplateProblem

from . import flow
from .matching import matches
from .models import Event, EventTrigger

logger = logging.getLogger("stevora.events")


def workflow_stored(sender: Any, instance: Workflow, created: bool, raw: bool = False, **kwargs: Any) -> None:
    """``post_save`` of a Workflow: a new version's event triggers replace the old ones."""
    if created and not raw:
        sync_event_triggers(instance)


def sync_event_triggers(workflow: Workflow) -> list[EventTrigger]:
    try:
        spec = spec_for(workflow)
    except DefinitionError as exc:
        # Only load_workflow stores definitions, validated; a row written some other way (a
        # fixture, a data migration) that is not one starts nothing rather than failing the save.
        logger.warning("workflow %s v%s: not a valid definition, no event triggers: %s",
                       workflow.name, workflow.version, exc)
        return []
    EventTrigger.objects.filter(workspace_id=workflow.workspace_id, workflow_name=workflow.name).delete()
    return [EventTrigger.objects.create(
        workspace_id=workflow.workspace_id, workflow=workflow, workflow_name=workflow.name,
        trigger_index=t.index, name=t.event, key=t.key, condition=t.condition, input=t.input,
        debounce=t.debounce, rate_limit=t.rate_limit)
        for t in spec.triggers if t.kind == "event"]


def idempotency_key(event: Event, trigger: EventTrigger) -> str:
    """One run per (event id, trigger); an event without an id is its own row."""
    ident = event.event_id if event.event_id is not None else f"#{event.pk}"
    key = f"event:{trigger.trigger_index}:{ident}"
    if len(key) > 255:
        key = f"event:{trigger.trigger_index}:sha256:{hashlib.sha256(ident.encode()).hexdigest()}"
    return key


def start_triggered_runs(event: Event) -> tuple[list[str], list[str], list[str]]:
    """Start a run for every trigger this new event matches (inside the delivery's transaction).

    Returns (run ids, problems, skipped): a trigger whose input the workflow refuses starts no
    run and is reported, and the event is still stored and delivered to its waits; a trigger
    whose rate_limit is reached starts nothing (``skipped`` says why); a debounced trigger
    starts its run later (``events.flow``).
    """
    started: list[str] = []
    problems: list[str] = []
    skipped: list[str] = []
    output = event.as_output()
    now = None
    candidates = (EventTrigger.objects.filter(workspace_id=event.workspace_id, name=event.name)
                  .filter(Q(key=event.key) | Q(key__isnull=True)).order_by("workflow_name", "trigger_index"))
    for trigger in candidates:
        if trigger.condition and not matches(trigger.condition, output, {}):
            continue
        where = f"{trigger.workflow_name} triggers[{trigger.trigger_index}]"
        limited = bool(trigger.debounce or trigger.rate_limit)
        key = ""
        if limited:
            now = now or clock.now()
            try:
                key = flow.flow_key(trigger.debounce or trigger.rate_limit, output)
            except TemplateProblem as exc:
                logger.warning("event %s #%s started no run of %s: %s", event.name, event.pk, where, exc)
                problems.append(f"{where}: key: {exc}")
                continue
            if trigger.debounce:
                flow.debounce(event, trigger, key, now)
                continue
            reason = flow.rate_limited(event, trigger, key, now)
            if reason is not None:
                flow.note(event, trigger, key, "skipped", reason=reason, at=now)
                skipped.append(f"{where}: {reason}")
                continue
        try:
            run_input = flow.run_input(trigger, output)
            with transaction.atomic():
                result = start_run(trigger.workflow_name, run_input, workspace=event.workspace_id,
                                   idempotency_key=idempotency_key(event, trigger), actor=f"event:{event.name}")
                if result.created:
                    record(result.run.pk, "run_triggered", actor=f"event:{event.name}",
                           message=f"started by trigger {trigger.trigger_index} on event "
                                   f"{event.name}[{event.key}] #{event.pk}",
                           data={"trigger": trigger.trigger_index, "kind": "event", "event": event.pk,
                                 "event_id": event.event_id, "name": event.name, "key": event.key})
                if limited:
                    flow.note(event, trigger, key, "started", run_id=str(result.run.pk), at=now)
            started.append(str(result.run.pk))
        except (StartError, TemplateProblem, ValueError) as exc:
            logger.warning("event %s #%s started no run of %s: %s", event.name, event.pk, where, exc)
            problems.append(f"{where}: {exc}")
    return started, problems, skipped
