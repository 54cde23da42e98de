"""Event triggers: ``triggers: [{event: NAME, key:, if:, input:}]`` start a run per event.

A delivered event starts one run per matching trigger in the transaction that stores
the event (``services.deliver_event``), so an event exists exactly when its runs do.
The run's idempotency key is derived from the event id and the trigger: a duplicate
delivery (the same id) starts nothing new, also when two deliveries race.
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
from steps.templating import TemplateProblem, render_value

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
        trigger_index=t.index, name=t.event, key=t.key, condition=t.condition, input=t.input)
        for t in spec.triggers if t.kind == "event"]


def idempotency_key(event: Event, trigger: EventTrigger) -> str:
    """One run per (event id, trigger); an event without an id is its own row."""
    ident = event.event_id if event.event_id is not None else f"#{event.pk}"
    key = f"event:{trigger.trigger_index}:{ident}"
    if len(key) > 255:
        key = f"event:{trigger.trigger_index}:sha256:{hashlib.sha256(ident.encode()).hexdigest()}"
    return key


def start_triggered_runs(event: Event) -> tuple[list[str], list[str]]:
    """Start a run for every trigger this new event matches (inside the delivery's transaction).

    Returns (run ids, problems): a trigger whose input the workflow refuses starts no run
    and is reported, and the event is still stored and delivered to its waits.
    """
    started: list[str] = []
    problems: list[str] = []
    output = event.as_output()
    candidates = (EventTrigger.objects.filter(workspace_id=event.workspace_id, name=event.name)
                  .filter(Q(key=event.key) | Q(key__isnull=True)).order_by("workflow_name", "trigger_index"))
    for trigger in candidates:
        if trigger.condition and not matches(trigger.condition, output, {}):
            continue
        where = f"{trigger.workflow_name} triggers[{trigger.trigger_index}]"
        try:
            run_input = _input(trigger, output)
            with transaction.atomic():
                result = start_run(trigger.workflow_name, run_input, workspace=event.workspace_id,
                                   idempotency_key=idempotency_key(event, trigger), actor=f"event:{event.name}")
                if result.created:
                    record(result.run.pk, "run_triggered", actor=f"event:{event.name}",
                           message=f"started by trigger {trigger.trigger_index} on event "
                                   f"{event.name}[{event.key}] #{event.pk}",
                           data={"trigger": trigger.trigger_index, "kind": "event", "event": event.pk,
                                 "event_id": event.event_id, "name": event.name, "key": event.key})
            started.append(str(result.run.pk))
        except (StartError, TemplateProblem, ValueError) as exc:
            logger.warning("event %s #%s started no run of %s: %s", event.name, event.pk, where, exc)
            problems.append(f"{where}: {exc}")
    return started, problems


def _input(trigger: EventTrigger, output: dict[str, Any]) -> Any:
    if trigger.input is None:
        payload = output["payload"]
        if not isinstance(payload, dict):
            raise ValueError(f"the run's input is the event's payload, which must be a JSON object, "
                             f"got {type(payload).__name__} (or give the trigger an input:)")
        return payload
    return render_value(trigger.input, {"event": output})  # start_run checks it against the input schema
