"""What the admin's run page draws: bars on one time axis, attempts from the history.

Percentages relative to the run's span, so the template is plain HTML/CSS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.apps import apps
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from steps.models import StepExecution

from .cli import _fmt_seconds
from .models import Run, RunEvent

INLINE_WAIT_TYPES = {"wait", "approval", "external_event", "parallel", "map", "workflow"}
ATTEMPT_KINDS = {"step_completed": "ok", "step_retry_scheduled": "retry", "step_failed": "failed",
                 "step_recovered": "recovered"}


@dataclass
class Segment:
    kind: str  # queued | running | waiting | retry_wait | failed
    left: float
    width: float
    title: str


@dataclass
class Attempt:
    number: int | None
    outcome: str
    worker: str
    started_at: datetime | None
    duration: str
    message: str
    at: datetime


@dataclass
class StepView:
    row: StepExecution
    depth: int
    segments: list[Segment] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    history: list[RunEvent] = field(default_factory=list)
    duration: str = ""
    llm_calls: list[dict[str, Any]] = field(default_factory=list)
    panel: str = ""  # HTML a step type's app drew for this step (STEP_PANELS), already escaped

    @property
    def input_json(self) -> str:
        return pretty(self.row.input)

    @property
    def output_json(self) -> str:
        return pretty(self.row.output)

    @property
    def error_json(self) -> str:
        error = {k: v for k, v in (self.row.error or {}).items() if k != "traceback"}
        return pretty(error)

    @property
    def traceback(self) -> str:
        return str((self.row.error or {}).get("traceback") or "")


# Step types whose app draws more than input/output on the run page (the llm step's
# transcript, the approval step's request and decision): filled by those apps at
# start-up, so runs imports none of them.
StepPanel = Callable[[StepExecution], str]
STEP_PANELS: dict[str, StepPanel] = {}


def register_step_panel(step_type: str, panel: StepPanel) -> None:
    """``panel(step)`` returns safe HTML (escape every value: render a template)."""
    STEP_PANELS[step_type] = panel


def pretty(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def llm_call_model() -> Any:
    """``providers.LLMCall`` when that app has it (built separately); None otherwise."""
    if not apps.is_installed("providers"):
        return None
    try:
        model = apps.get_model("providers", "LLMCall")
    except LookupError:
        return None
    return model if hasattr(StepExecution, "llm_calls") else None


def _llm_calls(steps: list[StepExecution]) -> dict[int, list[dict[str, Any]]]:
    model = llm_call_model()
    if model is None or not steps:
        return {}
    out: dict[int, list[dict[str, Any]]] = {}
    names = {f.name for f in model._meta.get_fields()}
    step_field = "step" if "step" in names else None
    if step_field is None:
        return {}
    for call in model.objects.filter(step__in=steps).order_by("pk"):
        row = {name: getattr(call, name, None) for name in (
            "pk", "provider_name", "model", "status", "step_attempt", "round", "try_number", "input_tokens",
            "output_tokens", "cost_usd", "latency_ms", "error", "http_status", "started_at")}
        if row["latency_ms"] is not None:
            row["latency_ms"] = round(float(row["latency_ms"]))
        out.setdefault(call.step_id, []).append(row)
    return out


# A run with a 10,000-item map still opens quickly: the page draws the first steps and
# the first history rows, and says how many it left out.
MAX_STEPS = 500
MAX_EVENTS = 5000


def build(run: Run) -> dict[str, Any]:
    rows = list(StepExecution.objects.filter(run_id=run.pk).order_by("id")[: MAX_STEPS + 1])
    events = list(RunEvent.objects.filter(run_id=run.pk).order_by("id")[: MAX_EVENTS + 1])
    more_steps = len(rows) > MAX_STEPS
    more_events = len(events) > MAX_EVENTS
    rows, events = rows[:MAX_STEPS], events[:MAX_EVENTS]
    now = timezone.now()
    start = run.created_at
    candidates = [run.finished_at, *(r.finished_at for r in rows), *(e.created_at for e in events)]
    end = max([t for t in candidates if t] or [start])
    if not run.finished_at:
        end = max(end, now)
    span = max((end - start).total_seconds(), 1e-3)

    def pct(t: datetime | None) -> float:
        if t is None:
            return 100.0
        return min(100.0, max(0.0, (t - start).total_seconds() / span * 100))

    def seg(kind: str, a: datetime | None, b: datetime | None, title: str) -> Segment:
        left = pct(a)
        right = pct(b)
        return Segment(kind, round(left, 3), round(max(right - left, 0.4), 3), title)

    by_step: dict[str, list[RunEvent]] = {}
    for event in events:
        if event.step_key:
            by_step.setdefault(event.step_key, []).append(event)
    depth_of: dict[int, int] = {}
    llm = _llm_calls(rows)
    views = []
    for row in rows:
        depth = depth_of.get(row.parent_id, -1) + 1 if row.parent_id else 0
        depth_of[row.pk] = depth
        view = StepView(row=row, depth=depth, history=by_step.get(row.key, []), llm_calls=llm.get(row.pk, []))
        if row.type in STEP_PANELS:
            view.panel = STEP_PANELS[row.type](row)
        queued_from = row.ready_at or row.created_at
        finished = row.finished_at or (None if run.finished_at else now)
        stop = finished or run.finished_at or now
        attempts = []
        for event in view.history:
            outcome = ATTEMPT_KINDS.get(event.kind)
            if outcome is None or (event.kind == "step_completed" and row.type in INLINE_WAIT_TYPES | {"condition"}):
                continue
            data = event.data or {}
            started = parse_datetime(data["started_at"]) if data.get("started_at") else None
            duration_ms = data.get("duration_ms")
            message = event.message or ""
            attempts.append(Attempt(number=data.get("attempt"), outcome=outcome, worker=str(data.get("worker", "")),
                                    started_at=started,
                                    duration=_fmt_seconds(duration_ms / 1000) if duration_ms is not None else "",
                                    message=message, at=event.created_at))
        view.attempts = attempts
        if row.type in INLINE_WAIT_TYPES:
            view.segments.append(seg("queued", queued_from, row.started_at or stop, "queued"))
            if row.started_at:
                view.segments.append(seg("waiting", row.started_at, stop,
                                         f"waiting {_fmt_seconds((stop - row.started_at).total_seconds())}"))
        else:
            first_start = next((a.started_at for a in attempts if a.started_at), None) or row.started_at
            view.segments.append(seg("queued", queued_from, first_start or stop, "queued"))
            previous_end: datetime | None = None
            for attempt in attempts:
                if attempt.started_at is None:
                    continue
                a_end = attempt.at
                if previous_end is not None and attempt.started_at > previous_end:
                    view.segments.append(seg("retry_wait", previous_end, attempt.started_at, "backoff before retry"))
                kind = "running" if attempt.outcome == "ok" else "failed"
                view.segments.append(seg(kind, attempt.started_at, a_end,
                                         f"attempt {attempt.number}: {attempt.outcome} {attempt.duration}"))
                previous_end = a_end
                if attempt.outcome != "ok":
                    view.ticks.append((round(pct(a_end), 3), f"attempt {attempt.number} {attempt.outcome}"))
            if row.status == "running" and row.started_at:
                if previous_end is not None and row.started_at > previous_end:
                    view.segments.append(seg("retry_wait", previous_end, row.started_at, "backoff before retry"))
                view.segments.append(seg("running", row.started_at, now, f"attempt {row.attempt} running"))
            elif row.status == "ready" and previous_end is not None:
                view.segments.append(seg("retry_wait", previous_end, row.not_before or now, "waiting to retry"))
            elif not attempts and row.started_at and row.finished_at:
                view.segments.append(seg("running", row.started_at, row.finished_at, "running"))
        if row.started_at and row.finished_at:
            view.duration = _fmt_seconds((row.finished_at - row.started_at).total_seconds())
        views.append(view)
    axis = axis_ticks(span)
    return {
        "steps": views, "history": events, "axis": axis, "span": _fmt_seconds(span),
        "started": start, "ended": end, "has_llm": llm_call_model() is not None,
        "steps_total": StepExecution.objects.filter(run_id=run.pk).count() if more_steps else len(rows),
        "events_total": RunEvent.objects.filter(run_id=run.pk).count() if more_events else len(events),
        "more_steps": more_steps, "more_events": more_events,
    }


AXIS_UNITS = (("ms", 0.001, 1.0), ("s", 1.0, 600.0), ("m", 60.0, 36000.0), ("h", 3600.0, float("inf")))


def axis_ticks(span: float, points: tuple[int, ...] = (0, 25, 50, 75, 100)) -> list[tuple[int, str]]:
    """Labels at ``points`` percent of ``span`` seconds, all in one unit (ms, s, m or h: the
    first that keeps the end label below 600), with as few decimals as keep them apart."""
    name, size, _ = next(unit for unit in AXIS_UNITS if span < unit[2])
    step = span * (points[1] - points[0]) / 100 / size if len(points) > 1 else span / size
    decimals = 0 if step >= 5 else 1 if step >= 0.5 else 2
    return [(p, f"{span * p / 100 / size:.{decimals}f}{name}") for p in points]


def waited(since: datetime | None, now: datetime | None = None) -> str:
    if since is None:
        return ""
    return _fmt_seconds(((now or timezone.now()) - since).total_seconds())


def until(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "never"
    delta = when - (now or timezone.now())
    if delta <= timedelta(0):
        return "expired"
    return "in " + _fmt_seconds(delta.total_seconds())
