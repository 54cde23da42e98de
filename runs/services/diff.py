"""The difference between two runs: where they first part, and per step what differs.

Steps are matched by key (``draft``, ``draft#2`` for a loop's second visit, ``gather[3]``
for a map item) and compared on status, rendered input, output and error. Plug-in apps
add what they record per step through ``register_step_differ`` (the providers app
compares an ``llm`` step's model conversation and tool calls). The runs *part* at the
first step, in the first run's order of execution, that differs or that only one of the
two reached. One service, many doors: ``manage.py diff_runs``, the API's
``GET /api/v1/runs/{id}/diff/{other_id}/`` and the admin's diff page all call ``diff_runs``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runs.models import Run
from steps.models import StepExecution

from .control import get_run

# How many differing paths one field reports (a huge output that differs everywhere stays readable).
MAX_PATHS = 20

# (step of run A, step of run B) -> differences [{"field", "path", "a", "b"}], for steps of a type.
StepDiffer = Callable[[StepExecution, StepExecution], list[dict[str, Any]]]
_DIFFERS: dict[str, StepDiffer] = {}


def register_step_differ(step_type: str, differ: StepDiffer) -> None:
    """Add ``differ``'s differences to every pair of steps of ``step_type`` (AppConfig.ready)."""
    _DIFFERS[step_type] = differ


def json_differences(a: Any, b: Any, path: str = "", limit: int = MAX_PATHS) -> list[dict[str, Any]]:
    """Where two JSON values differ: [{"path": "text" | "items[2].name" | "", "a", "b"}], at most ``limit``."""
    out: list[dict[str, Any]] = []

    def walk(x: Any, y: Any, where: str) -> None:
        if len(out) >= limit or x == y:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for key in [*x, *(k for k in y if k not in x)]:
                here = f"{where}.{key}" if where else str(key)
                if key not in x:
                    out.append({"path": here, "a": None, "b": y[key], "only": "b"})
                elif key not in y:
                    out.append({"path": here, "a": x[key], "b": None, "only": "a"})
                else:
                    walk(x[key], y[key], here)
                if len(out) >= limit:
                    return
            return
        if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
                walk(xi, yi, f"{where}[{i}]")
            return
        out.append({"path": where, "a": x, "b": y})

    walk(a, b, path)
    return out


def _error_summary(error: Any) -> Any:
    if not isinstance(error, dict):
        return error
    return {k: error[k] for k in ("type", "message") if k in error}


def _side(row: StepExecution) -> dict[str, Any]:
    return {"status": row.status, "type": row.type, "attempts": row.attempt}


def compare_steps(a: StepExecution, b: StepExecution) -> list[dict[str, Any]]:
    """Everything that differs between two visits of the same step key."""
    found: list[dict[str, Any]] = []
    if a.status != b.status:
        found.append({"field": "status", "path": "", "a": a.status, "b": b.status})
    for field, x, y in (("input", a.input, b.input), ("output", a.output, b.output),
                        ("error", _error_summary(a.error), _error_summary(b.error))):
        found.extend({"field": field, **d} for d in json_differences(x, y))
    if a.type == b.type and a.type in _DIFFERS:
        found.extend(_DIFFERS[a.type](a, b))
    return found


def _summary(run: Run) -> dict[str, Any]:
    return {"id": str(run.pk), "workflow": run.workflow_name, "version": run.workflow.version,
            "status": run.status, "forked_from": str(run.forked_from_id) if run.forked_from_id else None,
            "forked_from_step": run.forked_from_step or None}


def diff_runs(run_a: Any, run_b: Any) -> dict[str, Any]:
    """The difference of two runs as JSON: both runs, their run-level differences, the step
    where they first part, and one entry per step key (``same``, ``differs``, ``only_a``,
    ``only_b``) with its differences. Raises ``NotFound`` for an unknown run."""
    a, b = get_run(run_a), get_run(run_b)
    rows_a = list(StepExecution.objects.filter(run_id=a.pk).order_by("id"))
    rows_b = list(StepExecution.objects.filter(run_id=b.pk).order_by("id"))
    by_key_b = {row.key: row for row in rows_b}
    keys_a = {row.key for row in rows_a}
    steps: list[dict[str, Any]] = []
    for row in rows_a:
        other = by_key_b.get(row.key)
        if other is None:
            steps.append({"key": row.key, "outcome": "only_a", "a": _side(row), "b": None, "differences": []})
            continue
        found = compare_steps(row, other)
        steps.append({"key": row.key, "outcome": "differs" if found else "same", "a": _side(row),
                      "b": _side(other), "differences": found})
    steps.extend({"key": row.key, "outcome": "only_b", "a": None, "b": _side(row), "differences": []}
                 for row in rows_b if row.key not in keys_a)
    parted = next((s for s in steps if s["outcome"] != "same"), None)
    run_differences = [{"field": "status", "path": "", "a": a.status, "b": b.status}] if a.status != b.status else []
    for field, x, y in (("input", a.input, b.input), ("output", a.output, b.output),
                        ("error", _error_summary(a.error), _error_summary(b.error))):
        run_differences.extend({"field": field, **d} for d in json_differences(x, y))
    if a.workflow_id != b.workflow_id:
        run_differences.insert(0, {"field": "workflow", "path": "",
                                   "a": f"{a.workflow_name} v{a.workflow.version}",
                                   "b": f"{b.workflow_name} v{b.workflow.version}"})
    return {
        "a": _summary(a), "b": _summary(b), "identical": not run_differences and parted is None,
        "run_differences": run_differences,
        "first_difference": None if parted is None else {
            "step": parted["key"], "outcome": parted["outcome"],
            "differing": sorted({d["field"] for d in parted["differences"]})},
        "steps": steps,
    }
