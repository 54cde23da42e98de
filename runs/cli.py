"""Shared pieces of the management commands: errors, JSON and drawing a timeline."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.core.management.base import CommandError

from steps.models import StepExecution

from .models import Run, RunEvent
from .shapes import LLMCallSerializer, ToolCallSerializer

STATUS_MARK = {
    "completed": "✔", "failed": "✘", "running": "▶", "ready": "…", "pending": "·", "queued": "⋯", "waiting": "⏸",
    "cancelled": "⊘", "skipped": "↷", "paused": "⏸",
}


# What a plug-in app draws under the timeline for steps of its type: (step row) -> lines. The
# providers app draws an llm step's model turns and tool calls; runs cannot import it (layers).
StepDetail = Callable[[StepExecution], list[str]]
_STEP_DETAILS: dict[str, StepDetail] = {}


def register_step_detail(step_type: str, draw: StepDetail) -> None:
    """Draw ``draw(row)``'s lines under the timeline for each step of ``step_type`` (AppConfig.ready)."""
    _STEP_DETAILS[step_type] = draw


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut at a word boundary before ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[: max(limit - 1, 1)]
    space = cut.rfind(" ")
    if space > limit // 2:  # a word boundary not too far back; a long token is cut where it is
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


def parse_json_arg(value: str, what: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{what} is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise CommandError(f"{what} nests too deeply to parse") from None


def run_as_json(run: Run) -> dict[str, Any]:
    """What ``show_run --json`` prints. Keys are only ever added (scripts parse them); the
    LLM and tool calls use the API's field names (docs/api.md)."""
    rows = list(StepExecution.objects.filter(run_id=run.pk).order_by("id"))
    llm_calls, tool_calls = _calls_by_step(rows)
    steps = []
    for row in rows:
        steps.append({
            "name": row.key, "type": row.type, "status": row.status, "attempts": row.attempt,
            "output": row.output, "error": _public_error(row.error),
            "started_at": _iso(row.started_at), "finished_at": _iso(row.finished_at),
            "llm_calls": llm_calls.get(row.pk, []), "tool_calls": tool_calls.get(row.pk, []),
        })
        if row.type == "map" and "made" in (row.state or {}):
            # Items are made as max_concurrency admits them: the ones not made yet have no row.
            steps[-1]["items"] = {key: int(row.state[key]) for key in ("total", "made", "finished")}
    return {
        "id": str(run.pk), "workflow": run.workflow_name, "version": run.workflow.version,
        "status": run.status, "input": run.input, "output": run.output, "error": _public_error(run.error),
        "forked_from": str(run.forked_from_id) if run.forked_from_id else None,
        "forked_from_step": run.forked_from_step or None,
        "forks": [{"id": str(pk), "from_step": step, "status": status} for pk, step, status in forks_of(run)],
        "steps": steps,
    }


def forks_of(run: Run) -> list[tuple[Any, str, str]]:
    """(id, from_step, status) of the runs forked from ``run``, oldest first."""
    return list(Run.objects.filter(forked_from_id=run.pk).order_by("created_at", "id")
                .values_list("id", "forked_from_step", "status")[:1000])


def _calls_by_step(rows: list[StepExecution]) -> tuple[dict[int, list[Any]], dict[int, list[Any]]]:
    """LLM calls and tool calls of ``rows`` by step id, serialised as the API does. The rows belong
    to the providers app; they are reached through their reverse relations, so runs imports nothing of it."""
    llm: dict[int, list[Any]] = {}
    tools: dict[int, list[Any]] = {}
    if not rows:
        return llm, tools
    for attr, serializer, out in (("llm_calls", LLMCallSerializer, llm), ("tool_calls", ToolCallSerializer, tools)):
        descriptor = getattr(StepExecution, attr, None)
        if descriptor is None:
            continue
        model = descriptor.rel.related_model
        for call in model.objects.filter(step__run_id=rows[0].run_id).order_by("step_id", "id"):
            out.setdefault(call.step_id, []).append(serializer(call).data)
    return llm, tools


def _public_error(error: Any) -> Any:
    return error


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _fmt_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def map_progress(state: dict[str, Any]) -> str:
    """A map step's counters: items are made as max_concurrency admits them (runs.engine.mapitems)."""
    total, made, finished = int(state.get("total", 0)), int(state.get("made", 0)), int(state.get("finished", 0))
    text = f"{finished}/{total} items done"
    return text + (f", {total - made} not started" if made < total else "")


def draw_timeline(run: Run, width: int = 40, color: bool | None = None) -> str:
    """A run's steps as bars on one time axis: ░ queued, █ running, ▒ waiting, │ retries."""
    if color is None:
        color = sys.stdout.isatty()
    rows = list(StepExecution.objects.filter(run_id=run.pk).order_by("id"))
    events = list(RunEvent.objects.filter(run_id=run.pk).order_by("id"))
    start = run.created_at
    end_candidates = [run.finished_at] + [r.finished_at for r in rows] + [e.created_at for e in events]
    end = max([t for t in end_candidates if t] or [start])
    if not run.finished_at:
        from django.utils import timezone

        end = max(end, timezone.now())
    span = max((end - start).total_seconds(), 1e-6)

    def col(t: datetime | None) -> int:
        if t is None:
            return width
        return min(width - 1, max(0, int((t - start).total_seconds() / span * width)))

    retries: dict[str, int] = {}
    for event in events:
        if event.kind == "step_retry_scheduled":
            retries[event.step_key] = retries.get(event.step_key, 0) + 1
    paint = {"green": "\033[32m", "red": "\033[31m", "yellow": "\033[33m", "dim": "\033[2m", "end": "\033[0m"}
    status_color = {"completed": "green", "failed": "red", "waiting": "yellow", "cancelled": "dim"}

    lines = []
    head = f"Run {run.pk}  {run.workflow_name} v{run.workflow.version}  [{run.status}]"
    lines.append(head)
    took = ("took " if run.finished_at else "elapsed ") + _fmt_seconds(span)
    lines.append(f"started {start:%Y-%m-%d %H:%M:%S} UTC, {took}")
    lines.extend(fork_lines(run))
    name_width = min(max([len(_indent(r)) + len(r.key) for r in rows] + [4]), 36)
    lines.append("")
    lines.append(f"  {'step':<{name_width}}  {'0':<{width // 2}}{_fmt_seconds(span):>{width - width // 2}}  status")
    for row in rows:
        bar = [" "] * width
        q0 = col(row.ready_at or row.created_at)
        s0 = col(row.started_at) if row.started_at else None
        f0 = col(row.finished_at) if row.finished_at else (width - 1 if not run.finished_at else None)
        if s0 is not None:
            for i in range(q0, s0):
                bar[i] = "░"
            glyph = "▒" if row.type in {"wait", "approval", "external_event", "parallel", "map", "workflow"} else "█"
            stop = f0 if f0 is not None else s0
            for i in range(s0, max(stop, s0) + 1):
                if i < width:
                    bar[i] = glyph
        else:
            stop = f0 if f0 is not None else q0
            for i in range(q0, max(stop, q0) + 1):
                if i < width:
                    bar[i] = "░"
        label = (_indent(row) + row.key)[:name_width]
        duration = ""
        if row.started_at and row.finished_at:
            duration = _fmt_seconds((row.finished_at - row.started_at).total_seconds())
        extra = []
        if retries.get(row.key):
            extra.append(f"{retries[row.key]} retr{'y' if retries[row.key] == 1 else 'ies'}")
        if row.recovery_count:
            extra.append(f"recovered {row.recovery_count}×")
        if row.status == "failed" and row.error:
            extra.append(str(row.error.get("message", ""))[:60])
        if row.type == "map" and "made" in (row.state or {}):
            extra.append(map_progress(row.state))
        bar_text = "".join(bar)
        mark = STATUS_MARK.get(row.status, "?")
        status_text = f"{mark} {row.status}"
        if color and row.status in status_color:
            status_text = f"{paint[status_color[row.status]]}{status_text}{paint['end']}"
        lines.append(f"  {label:<{name_width}} │{bar_text}│ {status_text} {duration} {'; '.join(extra)}".rstrip())
    lines.append("")
    lines.append("  ░ queued  █ running  ▒ waiting")
    details = [(row, _STEP_DETAILS[row.type]) for row in rows if row.type in _STEP_DETAILS]
    for row, draw in details:
        drawn = draw(row)
        if drawn:
            lines.append("")
            lines.extend("  " + line for line in drawn)
    if details:
        lines.append("")
    if run.status == "completed":
        lines.append(f"output: {shorten(json.dumps(run.output, default=str, ensure_ascii=False), 500)}")
    elif run.error:
        lines.append(f"error: {run.error.get('type')}: {run.error.get('message')}")
    return "\n".join(lines)


def fork_lines(run: Run) -> list[str]:
    """The header lines that link a fork and its source, both ways."""
    lines = []
    if run.forked_from_id:
        lines.append(f"forked from run {run.forked_from_id} at step {run.forked_from_step}")
    for pk, step, status in forks_of(run):
        lines.append(f"fork {pk} from step {step} [{status}]")
    return lines


def _indent(row: StepExecution) -> str:
    depth = 0
    parent_id = row.parent_id
    seen = 0
    while parent_id is not None and seen < 10:
        depth += 1
        seen += 1
        parent_id = StepExecution.objects.filter(pk=parent_id).values_list("parent_id", flat=True).first()
    return "  " * depth


DIFF_MARK = {"same": "=", "differs": "≠", "only_a": "<", "only_b": ">"}


def _short_json(value: Any, limit: int = 70) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return shorten(text, limit)


def draw_diff(diff: dict[str, Any]) -> str:
    """``diff_runs A B``: both runs, where they first part, then per step what differs."""
    a, b = diff["a"], diff["b"]
    lines = [f"A  {a['id']}  {a['workflow']} v{a['version']}  {a['status']}",
             f"B  {b['id']}  {b['workflow']} v{b['version']}  {b['status']}"]
    parted = diff["first_difference"]
    if diff["identical"]:
        lines.append("the two runs are the same: every step has the same status, input and output")
    elif parted is None:
        lines.append("every step is the same; the runs differ only in:")
    else:
        what = {"only_a": "only A reached it", "only_b": "only B reached it"}.get(
            parted["outcome"], "differs in " + ", ".join(parted["differing"]))
        lines.append(f"the runs part at step {parted['step']}: {what}")
    for d in diff["run_differences"]:
        where = d["field"] + (f".{d['path']}" if d["path"] else "")
        lines.append(f"  run {where}: {_short_json(d['a'])} → {_short_json(d['b'])}")
    lines.append("")
    width = max((len(s["key"]) for s in diff["steps"]), default=4)
    for step in diff["steps"]:
        side_a = step["a"]["status"] if step["a"] else "—"
        side_b = step["b"]["status"] if step["b"] else "—"
        status = side_a if side_a == side_b else f"{side_a} | {side_b}"
        note = {"same": "same", "only_a": "only in A", "only_b": "only in B"}.get(
            step["outcome"], ", ".join(sorted({d["field"] for d in step["differences"]})) + " differ")
        lines.append(f"{DIFF_MARK[step['outcome']]} {step['key'].ljust(width)}  {status.ljust(20)} {note}")
        for d in step["differences"]:
            if d["field"] == "status":
                continue
            where = d["field"] + (f".{d['path']}" if d["path"] else "")
            lines.append(f"    {where}: {_short_json(d['a'])} → {_short_json(d['b'])}")
    return "\n".join(lines) + "\n"
