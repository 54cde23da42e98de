"""Resuming many waiting steps at once: a bulk decision's engine half, set-based.

``runs.services.resume_waiting_step`` resumes one step: its run id, the run lock, the
step, the step's UPDATE, its successor's INSERT and the run's status, about eight
statements a run. A bulk decision resumes hundreds in one transaction; for the common
shape — a top-level waiting step of a live, unpaused run, completed, whose successor is
a work step that no jump brings round again and that has no ``concurrency`` — the same
writes are made for all of them together:

- the runs locked first, in id order (``lock_runs``: the engine's lock order, and two
  bulk calls never deadlock on each other);
- one guarded UPDATE of the steps (``WHERE status = 'waiting'``, row count checked), each
  with its own output;
- one INSERT of the successors, ``ready``, rung after commit;
- one guarded UPDATE of the runs that were ``waiting`` (now ``running``);
- the history rows (``step_resumed``, ``step_completed``, ``step_ready``, ``run_running``:
  per run in the order the single path writes them) and the status signals through the
  caller's ``Effects``: one INSERT, one publish.

Every other shape (a paused run, a step inside a fan-out, a successor that is inline,
revisitable, queued by ``concurrency`` or the run's end, an outcome that is not a plain
completion) is resumed through ``resume_waiting_step`` one by one, in the same
transaction. ``tests/test_approvals_set_based.py`` compares the rows of both paths.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from runs.definitions import END, StepSpec, WorkflowSpec
from runs.models import IllegalTransition, Run, RunStatus
from steps import types as step_types
from steps.models import StepExecution, StepStatus

from . import rows
from . import transitions as t
from .dispatch import can_publish
from .effects import Effects
from .revisits import revisitable

LIVE = (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED)


def lock_runs(run_ids: Iterable[Any]) -> dict[Any, Run]:
    """Lock the runs (``FOR NO KEY UPDATE``, in id order) inside the caller's transaction;
    the ones that exist, with their workflows, by id."""
    rows = (Run.objects.select_for_update(of=("self",), no_key=True).select_related("workflow")
            .filter(pk__in=list(run_ids)).order_by("pk"))
    return {run.pk: run for run in rows}


@dataclass
class Waiting:
    """A step found waiting under its locked run: ``target`` is the successor the set-based
    resume starts, or None (resume it one by one)."""

    row: StepExecution
    run: Run
    spec: StepSpec
    target: StepSpec | None


def _target(run: Run, wf: WorkflowSpec, row: StepExecution, spec: StepSpec) -> StepSpec | None:
    if run.status == RunStatus.PAUSED or row.parent_id is not None or row.item_index is not None:
        return None
    if spec.next == END:
        return None  # the run ends: finish_run's path
    target = wf.by_name.get(spec.next) if spec.next is not None else wf.following(spec)
    if (target is None or target.sequence != spec.sequence or not step_types.is_work(target.type)
            or target.name in revisitable(wf) or target.concurrency is not None):
        return None
    return target


def waiting_steps(runs: dict[Any, Run], step_ids: Iterable[int], *, expected_type: str) -> dict[int, Waiting]:
    """The steps among ``step_ids`` that are waiting, of type ``expected_type``, in one of
    ``runs`` (locked by the caller) that is still live; by step id. Any other step is no
    longer waiting (a single resume would return False for it)."""
    found: dict[int, Waiting] = {}
    seen_runs: set[Any] = set()
    candidates = StepExecution.objects.filter(pk__in=list(step_ids), status=StepStatus.WAITING,
                                        type=expected_type).order_by("id")
    for row in candidates:
        run = runs.get(row.run_id)
        if run is None or run.status not in LIVE:
            continue
        wf = t.workflow_spec(run)
        spec = t.spec_of(wf, row)
        target = _target(run, wf, row, spec)
        if row.run_id in seen_runs:
            target = None  # a second step of the same run: the first one's resume changes the run
        seen_runs.add(row.run_id)
        found[row.pk] = Waiting(row, run, spec, target)
    return found


def complete_many(items: list[tuple[Waiting, dict[str, Any]]], fx: Effects, *, actor: str = "") -> None:
    """Complete each waiting step with its output and start its successor: what
    ``resume_waiting_step(step, Complete(output), actor=actor)`` writes for each, in a few
    statements for all. Every item has a ``target`` (``waiting_steps``); the runs are locked.
    Raises ``IllegalTransition`` (roll back) if a step was no longer waiting."""
    if not items:
        return
    now = t.now()
    updated = rows.update_each(StepExecution, "id", {"status": StepStatus.WAITING},
                               {"status": StepStatus.COMPLETED, "finished_at": now, "wake_at": None},
                               {"output": [(w.row.pk, output) for w, output in items]})
    if updated != len(items):  # cannot happen under the run locks; never write half of it
        raise IllegalTransition(f"{len(items) - updated} of {len(items)} steps were no longer waiting")
    dispatched = now if can_publish() else None
    successors = []
    for w, output in items:
        assert w.target is not None
        w.row.status, w.row.output, w.row.finished_at, w.row.wake_at = StepStatus.COMPLETED, output, now, None
        successors.append(StepExecution(
            run_id=w.run.pk, key=w.target.name, name=w.target.name, type=w.target.type, parent=None,
            branch=w.row.branch, item_index=None, visit=1, max_attempts=w.target.retry.max_attempts, ready_at=now,
            state={}, status=StepStatus.READY, dispatched_at=dispatched, priority=w.run.priority))
    rows.insert(StepExecution, successors)
    woke = [w.run.pk for w, _ in items if w.run.status == RunStatus.WAITING]
    if woke and Run.objects.filter(pk__in=woke, status=RunStatus.WAITING).update(
            status=RunStatus.RUNNING) != len(woke):
        raise IllegalTransition("a run changed status under its lock")
    for (w, _), nxt in zip(items, successors, strict=True):
        run_id = w.run.pk
        if actor:
            fx.event(run_id, "step_resumed", w.row.key, actor=actor)
        fx.event(run_id, "step_completed", w.row.key, data={"type": w.spec.type})
        fx.event(run_id, "step_ready", nxt.key, data={"type": nxt.type})
        fx.dispatch.append(nxt.pk)
        if nxt.priority:
            fx.priorities[nxt.pk] = nxt.priority
        if w.run.status == RunStatus.WAITING:
            fx.event(run_id, f"run_{RunStatus.RUNNING}")
            fx.status_changes.append((run_id, RunStatus.RUNNING))
            w.run.status = RunStatus.RUNNING
