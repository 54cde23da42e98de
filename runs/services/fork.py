"""Forking a run: a new run of the same version that keeps the results before a step."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from runs.definitions import input_errors
from runs.engine import starting
from runs.engine import transitions as t
from runs.engine.effects import Effects
from runs.errors import StartError
from runs.models import RUN_TERMINAL, IllegalTransition, Run, RunEvent, RunStatus
from steps.models import StepExecution, StepStatus

from .control import get_run

REPLAY_MODES = ("none", "recorded")


def fork_run(run_id: Any, *, from_step: str, run_input: Any = None, actor: str = "", replay: str = "none") -> Run:
    """A new run of the same workflow version that keeps the results before ``from_step``.

    The steps the source run completed (or skipped) before it first reached
    ``from_step`` are copied as completed rows with their output — they are not run
    again — and ``from_step`` is activated as if its predecessor had just finished,
    optionally with a changed input (the copied outputs stay as they were). The new
    run's history names its source. ``from_step`` must be a top-level step the source
    run reached. A run still moving (pending, running, waiting) is refused: pause or cancel it first.

    ``replay="recorded"``: in the steps that run again, model turns and tool calls whose request
    matches the source run's record are answered from that record (no cost, no side effect);
    the first that differs goes live, and everything after it (docs/llm.md, "What-if replays").

    A workflow with ``concurrency`` admits a fork like a new run: it is ``queued`` (the kept
    steps copied, ``from_step`` not started) while its key has no free slot, and
    ``transitions.admit_runs`` starts ``from_step`` when it is admitted — at once, in this
    transaction, if a slot is free and nobody waits ahead.
    """
    source = get_run(run_id)
    if source.status not in (*RUN_TERMINAL, RunStatus.PAUSED):
        raise IllegalTransition(f"run {source.pk} is {source.status}; only a completed, failed, cancelled or paused "
                                "run can be forked (pause or cancel it first)")
    wf = t.workflow_spec(source)
    errors: list[tuple[str, str]] = []
    top_level = [s.name for s in wf.steps]
    first = None
    if not isinstance(from_step, str) or from_step not in top_level:
        errors.append(("from_step", f"{from_step!r} is not a top-level step of {source.workflow} "
                                    f"(steps: {', '.join(top_level)})"))
    else:
        first = (StepExecution.objects.filter(run_id=source.pk, name=from_step, parent__isnull=True)
                 .order_by("id").first())
        if first is None:
            errors.append(("from_step", f"run {source.pk} never reached step {from_step!r}; "
                                        "fork from a step it reached"))
    if replay not in REPLAY_MODES:
        errors.append(("replay", f"{replay!r} is not one of: {', '.join(REPLAY_MODES)}"))
    new_input = source.input if run_input is None else run_input
    if run_input is not None:
        errors.extend(input_errors(wf, new_input))
    if errors:
        raise StartError(f"cannot fork run {source.pk}", errors)
    assert first is not None
    copied = list(StepExecution.objects.filter(
        run_id=source.pk, id__lt=first.pk, status__in=(StepStatus.COMPLETED, StepStatus.SKIPPED)).order_by("id"))
    concurrency_key = starting.run_key(source.workflow, wf, new_input)  # StartError if it does not render
    queued = bool(concurrency_key)
    now = t.now()
    with transaction.atomic():
        fx = Effects()
        run = Run.objects.create(
            workspace_id=source.workspace_id, workflow=source.workflow, workflow_name=source.workflow_name,
            status=RunStatus.QUEUED if queued else RunStatus.RUNNING, input=new_input, created_by=actor,
            started_at=None if queued else now, max_cost_usd=source.max_cost_usd, max_tokens=source.max_tokens,
            forked_from=source, forked_from_step=from_step, replay="" if replay == "none" else replay,
            priority=source.priority, concurrency_key=concurrency_key,
        )
        run.workflow = source.workflow
        fx.event(source.pk, "fork_created", actor=actor, message=f"forked as run {run.pk} from step {from_step!r}",
                 data={"fork": str(run.pk), "from_step": from_step})
        if not queued:
            fx.event(run.pk, "run_started", actor=actor,
                     data={"workflow": source.workflow_name, "version": source.workflow.version,
                           "forked_from": str(source.pk), "from_step": from_step})
        fx.event(run.pk, "run_forked", actor=actor,
                 message=f"forked from run {source.pk} at step {from_step!r}; {len(copied)} step(s) kept",
                 data={"source_run": str(source.pk), "from_step": from_step, "replay": replay,
                       "input_changed": run_input is not None, "kept": [row.key for row in copied]})
        new_ids: dict[int, int] = {}
        for row in copied:
            if row.parent_id is not None and row.parent_id not in new_ids:
                continue  # a child of a step that is not kept (cannot happen for finished fan-outs)
            clone = StepExecution.objects.create(
                run_id=run.pk, key=row.key, name=row.name, type=row.type,
                parent_id=new_ids.get(row.parent_id) if row.parent_id else None, branch=row.branch,
                item_index=row.item_index, visit=row.visit, status=row.status, attempt=row.attempt,
                failures=row.failures, max_attempts=row.max_attempts, input=row.input, output=row.output,
                error=row.error, state=row.state, ready_at=row.ready_at, started_at=row.started_at,
                finished_at=row.finished_at,
            )
            new_ids[row.pk] = clone.pk
            # Tokens and cost stay with the source run: the fork did not pay for them again.
            fx.event(run.pk, "step_copied", row.key, actor=actor,
                     data={"source_run": str(source.pk), "source_step": row.pk, "status": row.status})
        if queued:
            assert wf.concurrency is not None
            # transitions.admit_runs starts ``from_step`` when the key has a slot (at this flush if free).
            fx.queued_here[run.pk] = RunEvent(
                run_id=run.pk, kind="run_queued", actor=actor, message="waiting for a concurrency slot",
                data={"workflow": source.workflow_name, "version": source.workflow.version,
                      "concurrency_key": concurrency_key, "limit": wf.concurrency.limit,
                      "forked_from": str(source.pk), "from_step": from_step})
            fx.admit_run_keys.add(concurrency_key)
        else:
            fx.status_changes.append((run.pk, RunStatus.RUNNING))
            t.activate(run, wf, wf.by_name[from_step], fx)
        fx.flush()
    if queued:
        run.refresh_from_db()
    return run
