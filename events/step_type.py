"""The ``external_event`` step type: wait for an event by name, key and/or match expression."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db.models import Q

from runs.engine import transitions as engine
from runs.models import record
from steps import clock, types
from steps.templating import render_value

from .matching import lock_event_name, matches
from .models import Event, EventMatch, EventWait

if TYPE_CHECKING:
    from runs.definitions import StepSpec
    from runs.models import Run
    from steps.models import StepExecution

MAX_KEY = 255


def render_key(spec: StepSpec, context: dict[str, Any]) -> str | None:
    if "key" not in spec.raw or spec.raw["key"] is None:
        return None
    value = render_value(spec.raw["key"], context)
    if value is None or isinstance(value, (dict, list)):
        raise ValueError(f"external_event {spec.name!r}: key must render to a string or number, got {value!r}")
    key = str(value)
    if len(key) > MAX_KEY:
        raise ValueError(f"external_event {spec.name!r}: key is longer than {MAX_KEY} characters")
    return key


class ExternalEventType(types.StepType):
    name = "external_event"

    def activate(self, run: Run, step: StepExecution, spec: StepSpec, context: dict[str, Any]) -> types.Outcome:
        raw = spec.raw
        name = raw["event"]
        try:
            key = render_key(spec, context)
        except ValueError as exc:
            return types.Fail({"type": "template_error", "message": str(exc)})
        expression = raw.get("match") or ""
        lookback = float(raw.get("lookback_seconds") or 0)
        now = clock.now()
        lock_event_name(run.workspace_id, name)
        if lookback > 0:
            early = (Event.objects.filter(workspace_id=run.workspace_id, name=name,
                                          received_at__gte=now - timedelta(seconds=lookback))
                     .exclude(pk__in=EventMatch.objects.filter(run_id=run.pk, step_name=step.name)
                              .values("event_id"))
                     .order_by("received_at", "id"))
            if key is not None:
                early = early.filter(key=key)
            for event in early[:200]:
                output = event.as_output()
                if matches(expression, output, context):
                    EventMatch.objects.create(event=event, step=step, run=run, step_name=step.name)
                    record(run.pk, "event_matched", step_key=step.key, actor=f"event:{name}",
                           message=f"event {name}[{event.key}] #{event.pk} received before the wait "
                                   f"(within lookback {lookback:g}s)",
                           data={"event": event.pk, "name": name, "key": event.key, "early": True})
                    return types.Complete(output)
        EventWait.objects.create(step=step, run=run, workspace_id=run.workspace_id, name=name, key=key,
                                 match=expression)
        wake_at = now + timedelta(seconds=float(spec.timeout_seconds)) if spec.timeout_seconds else None
        return types.Wait(wake_at=wake_at, state={"event": name, "key": key})

    def wake(self, run: Run, step: StepExecution, spec: StepSpec) -> types.Outcome:
        EventWait.objects.filter(step_id=step.pk).delete()
        name = spec.raw["event"]
        if spec.raw.get("on_timeout", "fail") == "continue":
            # The same shape as a delivered event, so later steps can test ``output.timed_out``.
            return types.Complete({"id": None, "name": name, "key": step.state.get("key"), "payload": None,
                                   "event_id": None, "received_at": None, "timed_out": True})
        return types.Fail({"type": "event_timeout",
                           "message": f"no event {name!r} (key {step.state.get('key')!r}) arrived within "
                                      f"{spec.timeout_seconds}s"})

    def cancel(self, step: StepExecution) -> None:
        EventWait.objects.filter(step_id=step.pk).delete()

    def reopen(self, step: StepExecution) -> None:
        """The run was retried and this cancelled step waits again: index its wait again."""
        run = step.run
        spec = engine.spec_of(engine.workflow_spec(run), step)
        EventWait.objects.get_or_create(step=step, defaults={
            "run": run, "workspace_id": run.workspace_id, "name": spec.raw["event"],
            "key": step.state.get("key"), "match": spec.raw.get("match") or ""})


def waits_for(workspace_id: int, name: str, key: str) -> Any:
    """Waiting steps an event (name, key) may satisfy: same key, or no key (match only)."""
    return (EventWait.objects.filter(workspace_id=workspace_id, name=name)
            .filter(Q(key=key) | Q(key__isnull=True)))


def register_event_type() -> None:
    types.register(ExternalEventType())
