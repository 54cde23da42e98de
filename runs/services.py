"""Run services: the one place where definitions are stored and runs change state.

Management commands, admin actions and API views call these functions and nothing
else; each owns its transaction and its checks, and raises a clear error instead of
half-writing anything.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from steps import fastcommit
from steps import types as step_types
from steps.dispatch import can_publish
from steps.models import StepExecution, StepStatus

from . import engine
from .definitions import DefinitionError, WorkflowSpec, handler_registered, input_errors, parse_text, spec_for, validate
from .models import (
    DEFAULT_WORKSPACE_SLUG,
    RUN_TERMINAL,
    IllegalTransition,
    Run,
    RunEvent,
    RunStatus,
    Workflow,
    Workspace,
)

logger = logging.getLogger("stevora.services")


class StartError(ValueError):
    """A run could not be started; ``errors`` lists (path, message)."""

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        self.errors = errors or []
        detail = "".join(f"\n  {p}: {m}" for p, m in self.errors)
        super().__init__(message + detail)


class NotFound(LookupError):
    pass


@dataclass
class LoadResult:
    workflow: Workflow
    created: bool


@dataclass
class StartResult:
    run: Run
    created: bool


# --- definitions ----------------------------------------------------------------------


def load_workflow(document: Any, *, workspace: Workspace | None = None, source: str | None = None) -> LoadResult:
    """Validate and store a definition. Same content: the existing version; changed: N+1."""
    spec = validate(document, source=source, handler_exists=handler_registered)
    workspace = workspace or Workspace.default()
    digest = spec.content_hash
    for _ in range(3):
        existing = Workflow.objects.filter(workspace=workspace, name=spec.name, content_hash=digest).first()
        if existing is not None:
            return LoadResult(existing, False)
        latest = Workflow.objects.filter(workspace=workspace, name=spec.name).aggregate(v=Max("version"))["v"] or 0
        try:
            with transaction.atomic():
                workflow = Workflow.objects.create(
                    workspace=workspace, name=spec.name, version=latest + 1, description=spec.description,
                    definition=document, content_hash=digest,
                )
            return LoadResult(workflow, True)
        except IntegrityError:
            continue  # a concurrent load took this version number or stored the same content
    raise DefinitionError([("name", f"could not store {spec.name!r}: concurrent loads kept colliding")], source)


def load_workflow_text(text: str, *, source: str | None = None, workspace: Workspace | None = None) -> LoadResult:
    return load_workflow(parse_text(text, source), workspace=workspace, source=source)


def definition_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in {".yaml", ".yml", ".json"}))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{raw}: no such file or directory")
    return files


def resolve_workflow(name: str, *, workspace: Workspace | int | None = None, version: int | None = None) -> Workflow:
    ws_id = workspace.pk if isinstance(workspace, Workspace) else workspace
    workflow: Workflow | None
    if fastcommit.available():
        workflow = fastcommit.workflow(name, ws_id, version)  # the same query, a prepared statement
    else:
        # The default workspace by its slug, in the same query (no get_or_create on every
        # start: where there is no default workspace there is no workflow in it either).
        qs = (Workflow.objects.filter(workspace__slug=DEFAULT_WORKSPACE_SLUG) if ws_id is None
              else Workflow.objects.filter(workspace_id=ws_id)).filter(name=name)
        workflow = qs.filter(version=version).first() if version else qs.order_by("-version").first()
    if workflow is None:
        which = f"{name} v{version}" if version else name
        raise NotFound(f"no workflow named {which!r}; load it first with load_workflows")
    return workflow


# --- starting runs ---------------------------------------------------------------------


def start_run(name: str, run_input: Any = None, *, workspace: Workspace | int | None = None,
              version: int | None = None, idempotency_key: str | None = None, actor: str = "",
              budget: dict[str, Any] | None = None) -> StartResult:
    """Start a run of the latest (or given) version of ``name``.

    Callable inside the caller's own transaction: the run exists exactly when that
    transaction commits, and its first step is published only then. The same
    idempotency key (per workspace and workflow) returns the same run, also when two
    starts race: the database's unique constraint decides.
    """
    try:
        workflow = resolve_workflow(name, workspace=workspace, version=version)
    except NotFound as exc:
        raise StartError(str(exc), [("workflow", str(exc))]) from None
    if idempotency_key is None and fastcommit.available():
        run = _start_in_one_statement(workflow, run_input if run_input is not None else {}, actor=actor,
                                      budget=budget)
        if run is not None:
            return StartResult(run, True)
    with transaction.atomic():
        fx = engine.Effects()
        run, created = _start(workflow, run_input if run_input is not None else {}, fx,
                              idempotency_key=idempotency_key, actor=actor, budget=budget)
        fx.flush()
    return StartResult(run, created)


def start_run_locked(*, workspace_id: int, name: str, version: int | None, run_input: Any,
                     parent_step: StepExecution, fx: engine.Effects, actor: str) -> Run:
    """Start a child run inside the parent's transaction (used by the engine)."""
    try:
        workflow = resolve_workflow(name, workspace=workspace_id, version=version)
    except NotFound as exc:
        raise StartError(str(exc)) from None
    run, _ = _start(workflow, run_input, fx, parent_step=parent_step, actor=actor)
    return run


def _budget_value(budget: dict[str, Any], key: str, path: str, errors: list[tuple[str, str]]) -> Any:
    value = budget.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        errors.append((f"{path}.{key}", "must be a number"))
        return None
    try:
        number = Decimal(str(value))
    except ArithmeticError:
        errors.append((f"{path}.{key}", "must be a number"))
        return None
    if number <= 0:
        errors.append((f"{path}.{key}", "must be greater than 0"))
        return None
    return number


def _checked(workflow: Workflow, wf: WorkflowSpec, run_input: Any, idempotency_key: str | None,
             budget: dict[str, Any] | None) -> tuple[Decimal | None, int | None]:
    """Refuse a bad start whole, naming each problem; the run's budget limits."""
    errors = input_errors(wf, run_input)
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key.strip()
                                        or len(idempotency_key) > 255):
        errors.append(("idempotency_key", "must be a non-empty string of at most 255 characters"))
    merged_budget = {**wf.budget, **(budget or {})}
    max_cost = _budget_value(merged_budget, "max_cost_usd", "budget", errors)
    max_tokens = _budget_value(merged_budget, "max_tokens", "budget", errors)
    if errors:
        raise StartError(f"cannot start {workflow}: invalid input", errors)
    return max_cost, int(max_tokens) if max_tokens is not None else None


def _start_in_one_statement(workflow: Workflow, run_input: Any, *, actor: str,
                            budget: dict[str, Any] | None) -> Run | None:
    """PostgreSQL, outside any transaction, no idempotency key, a work step first: the
    run, its first step and both history rows in one statement (what ``_start`` and
    ``engine.activate`` write), then its doorbell. None: take the general path."""
    wf = spec_for(workflow)
    first = wf.steps[0]
    if not step_types.is_work(first.type):
        return None
    max_cost, max_tokens = _checked(workflow, wf, run_input, None, budget)
    t = timezone.now()
    run = Run(workspace_id=workflow.workspace_id, workflow=workflow, workflow_name=workflow.name,
              status=RunStatus.RUNNING, input=run_input, created_by=actor, started_at=t, max_cost_usd=max_cost,
              max_tokens=max_tokens)
    step = StepExecution(run=run, key=first.name, name=first.name, type=first.type, branch="", visit=1,
                         max_attempts=first.retry.max_attempts, ready_at=t, state={}, status=StepStatus.READY,
                         dispatched_at=t if can_publish() else None)
    fastcommit.start(
        run, step,
        RunEvent(run=run, kind="run_started", actor=actor,
                 data={"workflow": workflow.name, "version": workflow.version}),
        RunEvent(run=run, kind="step_ready", step_key=first.name, data={"type": first.type}))
    engine.Effects(dispatch=[step.pk], status_changes=[(run.pk, RunStatus.RUNNING)]).publish()
    return run


def _start(workflow: Workflow, run_input: Any, fx: engine.Effects, *, idempotency_key: str | None = None,
           parent_step: StepExecution | None = None, actor: str = "",
           budget: dict[str, Any] | None = None) -> tuple[Run, bool]:
    wf = spec_for(workflow)
    max_cost, max_tokens = _checked(workflow, wf, run_input, idempotency_key, budget)
    if idempotency_key:
        existing = Run.objects.filter(workspace_id=workflow.workspace_id, workflow_name=workflow.name,
                                      idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing, False
    t = timezone.now()
    try:
        # The savepoint only serves the idempotency race below; without a key an
        # IntegrityError is re-raised and rolls back the caller's transaction anyway.
        with transaction.atomic() if idempotency_key else contextlib.nullcontext():
            run = Run.objects.create(
                workspace_id=workflow.workspace_id, workflow=workflow, workflow_name=workflow.name,
                status=RunStatus.RUNNING, input=run_input, idempotency_key=idempotency_key or None,
                parent_run_id=parent_step.run_id if parent_step else None, parent_step=parent_step,
                created_by=actor, started_at=t, max_cost_usd=max_cost, max_tokens=max_tokens,
            )
    except IntegrityError:
        if not idempotency_key:
            raise
        # A concurrent start with the same key committed first; its run is the answer.
        existing = Run.objects.get(workspace_id=workflow.workspace_id, workflow_name=workflow.name,
                                   idempotency_key=idempotency_key)
        return existing, False
    run.workflow = workflow
    fx.event(run.pk, "run_started", actor=actor,
             data={"workflow": workflow.name, "version": workflow.version,
                   **({"parent_run": str(parent_step.run_id)} if parent_step else {})})
    fx.status_changes.append((run.pk, RunStatus.RUNNING))
    engine.activate(run, wf, wf.steps[0], fx)
    return run, True


# --- control actions -------------------------------------------------------------------


def get_run(run_id: Any) -> Run:
    try:
        return Run.objects.select_related("workflow").get(pk=run_id)
    except (Run.DoesNotExist, ValidationError, ValueError):
        raise NotFound(f"no run with id {run_id!r}") from None


def _control(run_id: Any, action: str, actor: str, fn: Any) -> Run:
    get_run(run_id)
    with transaction.atomic():
        run = engine.lock_run(run_id)
        fx = engine.Effects()
        fn(run, fx)
        fx.event(run.pk, f"control_{action}", actor=actor)
        fx.flush()
    return run


def cancel_run(run_id: Any, *, actor: str = "", reason: str = "") -> Run:
    def do(run: Run, fx: engine.Effects) -> None:
        if run.status in RUN_TERMINAL:
            raise IllegalTransition(f"run {run.pk} is already {run.status}; only an unfinished run can be cancelled")
        engine.finish_run(run, engine.workflow_spec(run), fx, RunStatus.CANCELLED, actor=actor,
                          error=engine.error_dict("cancelled", reason or f"cancelled by {actor or 'operator'}"))

    return _control(run_id, "cancel", actor, do)


def pause_run(run_id: Any, *, actor: str = "") -> Run:
    def do(run: Run, fx: engine.Effects) -> None:
        if run.status not in (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PENDING):
            raise IllegalTransition(f"run {run.pk} is {run.status}; only a running or waiting run can be paused")
        Run.objects.filter(pk=run.pk, status=run.status).update(status=RunStatus.PAUSED)
        run.status = RunStatus.PAUSED
        fx.status_changes.append((run.pk, RunStatus.PAUSED))

    return _control(run_id, "pause", actor, do)


def resume_run(run_id: Any, *, actor: str = "") -> Run:
    def do(run: Run, fx: engine.Effects) -> None:
        if run.status != RunStatus.PAUSED:
            raise IllegalTransition(f"run {run.pk} is {run.status}; only a paused run can be resumed")
        Run.objects.filter(pk=run.pk, status=RunStatus.PAUSED).update(status=RunStatus.RUNNING)
        run.status = RunStatus.RUNNING
        fx.status_changes.append((run.pk, RunStatus.RUNNING))
        _redispatch_ready(run, fx)
        engine.refresh_run_status(run, fx)

    return _control(run_id, "resume", actor, do)


def _redispatch_ready(run: Run, fx: engine.Effects) -> None:
    from steps.dispatch import can_publish

    t = timezone.now()
    # A process that cannot publish (embedded CLI) leaves dispatched_at empty so that the
    # engine's reconciler rings at its next sweep instead of REDISPATCH_SECONDS later.
    publish = can_publish()
    rows = list(StepExecution.objects.filter(run_id=run.pk, status=StepStatus.READY).values_list("id", "not_before"))
    due = [pk for pk, not_before in rows if not_before is None or not_before <= t]
    if due:
        StepExecution.objects.filter(pk__in=due).update(dispatched_at=t if publish else None)
        fx.dispatch.extend(due)
    for pk, not_before in rows:
        delay = (not_before - t).total_seconds() if not_before is not None else 0.0
        if 0 < delay <= 60 and publish:
            # Still backing off from a failure: a message now would find nothing to claim.
            StepExecution.objects.filter(pk=pk).update(dispatched_at=not_before)
            fx.countdowns.append((pk, delay))


def retry_run(run_id: Any, *, actor: str = "") -> Run:
    """failed -> running: the step that failed the run gets a fresh set of attempts.

    Fan-out steps that failed because of it are reopened, and the siblings cancelled
    by that failure are put back as they were; completed steps are left alone.
    """

    def do(run: Run, fx: engine.Effects) -> None:
        if run.status != RunStatus.FAILED:
            raise IllegalTransition(f"run {run.pk} is {run.status}; only a failed run can be retried")
        root_key = (run.error or {}).get("step")
        if not root_key:
            raise IllegalTransition(f"run {run.pk} did not fail in a step (it failed with "
                                    f"{(run.error or {}).get('type')!r}); start a new run instead")
        root = StepExecution.objects.filter(run_id=run.pk, key=root_key).first()
        if root is None or root.status != StepStatus.FAILED:
            # e.g. max_visits refused a visit that never got a row: retrying would loop again.
            raise IllegalTransition(f"run {run.pk} failed with {(run.error or {}).get('type')!r} before step "
                                    f"{root_key!r} could run; fix the cause and start a new run instead")
        Run.objects.filter(pk=run.pk, status=RunStatus.FAILED).update(
            status=RunStatus.RUNNING, error=None, finished_at=None)
        run.status = RunStatus.RUNNING
        fx.status_changes.append((run.pk, RunStatus.RUNNING))
        wf = engine.workflow_spec(run)
        _reopen(run, wf, root, fx)
        # Steps cancelled when the run failed (siblings in fan-outs) come back too.
        for row in StepExecution.objects.filter(run_id=run.pk, status=StepStatus.CANCELLED):
            previous = (row.error or {}).get("previous_status")
            if previous and _ancestors_open(row):
                _restore(run, row, previous, fx)
        engine.refresh_run_status(run, fx)

    return _control(run_id, "retry", actor, do)


def _ancestors_open(row: StepExecution) -> bool:
    parent_id = row.parent_id
    while parent_id is not None:
        parent = StepExecution.objects.get(pk=parent_id)
        if parent.status != StepStatus.WAITING:
            return False
        parent_id = parent.parent_id
    return True


def _reopen(run: Run, wf: Any, row: StepExecution, fx: engine.Effects) -> None:
    if row.parent_id is not None:
        parent = StepExecution.objects.get(pk=row.parent_id)
        if parent.status == StepStatus.FAILED:
            StepExecution.objects.filter(pk=parent.pk).update(status=StepStatus.WAITING, error=None,
                                                               finished_at=None)
            fx.event(run.pk, "step_reopened", parent.key)
            if parent.parent_id is not None:
                _reopen_chain(run, parent, fx)
    if row.type == "workflow" and row.state.get("child_run"):
        child = Run.objects.get(pk=row.state["child_run"])
        if child.status == RunStatus.FAILED:
            StepExecution.objects.filter(pk=row.pk).update(status=StepStatus.WAITING, error=None, finished_at=None)
            fx.event(run.pk, "step_reopened", row.key)
            fx.after_commit.append(lambda: retry_run(child.pk, actor=f"run:{run.pk}"))
            return
    if not step_types.is_work(row.type):
        # An inline or control step (approval, event, timer; a condition, a map whose 'over'
        # failed, a child that could not start) has no worker to retry it: activate it afresh.
        _reactivate_inline(run, wf, row, fx)
        return
    _restore(run, row, StepStatus.READY, fx, reset_failures=True)


def _reactivate_inline(run: Run, wf: Any, row: StepExecution, fx: engine.Effects) -> None:
    t = timezone.now()
    StepExecution.objects.filter(pk=row.pk, status=StepStatus.FAILED).update(
        status=StepStatus.RUNNING, error=None, output=None, finished_at=None, started_at=t, ready_at=t,
        wake_at=None, failures=0)
    row.refresh_from_db()
    fx.event(run.pk, "step_reopened", row.key, data={"status": StepStatus.RUNNING})
    engine._start_inline(run, wf, engine.spec_of(wf, row), row, fx)


def _reopen_chain(run: Run, row: StepExecution, fx: engine.Effects) -> None:
    assert row.parent_id is not None
    parent = StepExecution.objects.get(pk=row.parent_id)
    if parent.status == StepStatus.FAILED:
        StepExecution.objects.filter(pk=parent.pk).update(status=StepStatus.WAITING, error=None, finished_at=None)
        fx.event(run.pk, "step_reopened", parent.key)
        if parent.parent_id is not None:
            _reopen_chain(run, parent, fx)


def _restore(run: Run, row: StepExecution, previous: str, fx: engine.Effects, *, reset_failures: bool = False) -> None:
    t = timezone.now()
    status = StepStatus.READY if previous in (StepStatus.READY, StepStatus.RUNNING) else previous
    fields: dict[str, Any] = {"status": status, "finished_at": None, "lease_owner": "", "lease_until": None,
                              "not_before": None}
    if reset_failures:
        fields.update(failures=0, error=None)
    else:
        fields["error"] = None
    if status == StepStatus.WAITING and not step_types.is_work(row.type):
        # A waiting inline step (approval, event, timer) is simply waiting again; its type
        # reopens what the cancellation closed (the approval request, the event wait).
        reopen = getattr(step_types.get(row.type), "reopen", None)
        if reopen is not None:
            reopen(row)
    elif status == StepStatus.READY:
        fields.update(ready_at=t, dispatched_at=t)
        fx.dispatch.append(row.pk)
    StepExecution.objects.filter(pk=row.pk, status__in=(StepStatus.FAILED, StepStatus.CANCELLED)).update(**fields)
    fx.event(run.pk, "step_reopened", row.key, data={"status": status})


# --- resuming waiting steps -------------------------------------------------------------


def resume_waiting_step(step_id: int, outcome: step_types.Outcome, *, actor: str = "",
                        expected_type: str | None = None, fx: engine.Effects | None = None) -> bool:
    """Complete or fail a waiting step (a decision, an event, a timer) and move the run on.

    Returns False when the step is no longer waiting (decided already, cancelled).
    Call it inside your own transaction to make your change and the resume one.
    """
    with transaction.atomic():
        run_id = StepExecution.objects.filter(pk=step_id).values_list("run_id", flat=True).first()
        if run_id is None:
            raise NotFound(f"no step execution {step_id}")
        run = engine.lock_run(run_id)
        row = StepExecution.objects.get(pk=step_id)
        if row.status != StepStatus.WAITING or (expected_type and row.type != expected_type):
            return False
        if run.status not in (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED):
            return False
        own_fx = fx is None
        effects = fx or engine.Effects()
        wf = engine.workflow_spec(run)
        if actor:
            effects.event(run.pk, "step_resumed", row.key, actor=actor)
        engine.apply_outcome(run, wf, engine.spec_of(wf, row), row, outcome, effects,
                             from_status=StepStatus.WAITING)
        engine.refresh_run_status(run, effects)
        if own_fx:
            effects.flush()
    return True


# --- forking -------------------------------------------------------------------------------


def fork_run(run_id: Any, *, from_step: str, run_input: Any = None, actor: str = "") -> Run:
    """A new run of the same workflow version that keeps the results before ``from_step``.

    The steps the source run completed (or skipped) before it first reached
    ``from_step`` are copied as completed rows with their output — they are not run
    again — and ``from_step`` is activated as if its predecessor had just finished,
    optionally with a changed input (the copied outputs stay as they were). The new
    run's history names its source. ``from_step`` must be a top-level step the source
    run reached. A run still moving (pending, running, waiting) is refused: pause or cancel it first.
    """
    source = get_run(run_id)
    if source.status not in (*RUN_TERMINAL, RunStatus.PAUSED):
        raise IllegalTransition(f"run {source.pk} is {source.status}; only a completed, failed, cancelled or paused "
                                "run can be forked (pause or cancel it first)")
    wf = engine.workflow_spec(source)
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
    new_input = source.input if run_input is None else run_input
    if run_input is not None:
        errors.extend(input_errors(wf, new_input))
    if errors:
        raise StartError(f"cannot fork run {source.pk}", errors)
    assert first is not None
    copied = list(StepExecution.objects.filter(
        run_id=source.pk, id__lt=first.pk, status__in=(StepStatus.COMPLETED, StepStatus.SKIPPED)).order_by("id"))
    t = timezone.now()
    with transaction.atomic():
        fx = engine.Effects()
        run = Run.objects.create(
            workspace_id=source.workspace_id, workflow=source.workflow, workflow_name=source.workflow_name,
            status=RunStatus.RUNNING, input=new_input, created_by=actor, started_at=t,
            max_cost_usd=source.max_cost_usd, max_tokens=source.max_tokens,
            forked_from=source, forked_from_step=from_step,
        )
        run.workflow = source.workflow
        fx.event(source.pk, "fork_created", actor=actor, message=f"forked as run {run.pk} from step {from_step!r}",
                 data={"fork": str(run.pk), "from_step": from_step})
        fx.event(run.pk, "run_started", actor=actor,
                 data={"workflow": source.workflow_name, "version": source.workflow.version,
                       "forked_from": str(source.pk), "from_step": from_step})
        fx.event(run.pk, "run_forked", actor=actor,
                 message=f"forked from run {source.pk} at step {from_step!r}; {len(copied)} step(s) kept",
                 data={"source_run": str(source.pk), "from_step": from_step,
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
        fx.status_changes.append((run.pk, RunStatus.RUNNING))
        engine.activate(run, wf, wf.by_name[from_step], fx)
        fx.flush()
    return run
