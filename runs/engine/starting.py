"""Inserting a run with its first step: top-level runs (``runs.services.start_run``) and
child runs (a ``workflow`` step), the same rows either way."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction

from runs.definitions import WorkflowSpec, input_errors, spec_for
from runs.errors import NotFound, StartError
from runs.models import DEFAULT_WORKSPACE_SLUG, IllegalTransition, Run, RunEvent, RunStatus, Workflow, Workspace
from steps import types as step_types
from steps.models import StepExecution, StepStatus
from steps.templating import TemplateProblem

from . import flow, hotpath, rows
from . import transitions as t
from .dispatch import can_publish
from .effects import Effects


def resolve_workflow(name: str, *, workspace: Workspace | int | None = None, version: int | None = None) -> Workflow:
    ws_id = workspace.pk if isinstance(workspace, Workspace) else workspace
    workflow: Workflow | None
    if hotpath.available():
        workflow = hotpath.workflow(name, ws_id, version)  # the same query, a prepared statement
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


def checked(workflow: Workflow, wf: WorkflowSpec, run_input: Any, idempotency_key: str | None,
            budget: dict[str, Any] | None, priority: Any = None) -> tuple[Decimal | None, int | None]:
    """Refuse a bad start whole, naming each problem; the run's budget limits."""
    errors = input_errors(wf, run_input)
    if priority is not None and (problem := flow.priority_problem(priority)):
        errors.append(("priority", problem))
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key.strip()
                                        or len(idempotency_key) > 255):
        errors.append(("idempotency_key", "must be a non-empty string of at most 255 characters"))
    merged_budget = {**wf.budget, **(budget or {})}
    max_cost = _budget_value(merged_budget, "max_cost_usd", "budget", errors)
    max_tokens = _budget_value(merged_budget, "max_tokens", "budget", errors)
    if errors:
        raise StartError(f"cannot start {workflow}: invalid input", errors)
    return max_cost, int(max_tokens) if max_tokens is not None else None


def start_in_one_statement(workflow: Workflow, run_input: Any, *, actor: str,
                           budget: dict[str, Any] | None, priority: int | None = None) -> Run | None:
    """PostgreSQL, outside any transaction, no idempotency key, a work step first: the
    run, its first step and both history rows in one statement (what ``create_run`` and
    ``transitions.activate`` write), then its doorbell. None: take the general path."""
    wf = spec_for(workflow)
    first = wf.steps[0]
    if not step_types.is_work(first.type) or wf.concurrency is not None or first.concurrency is not None:
        return None  # (concurrency: the admission decides, under its lock, in the general path)
    max_cost, max_tokens = checked(workflow, wf, run_input, None, budget, priority)
    priority = wf.priority if priority is None else priority
    now = t.now()
    run = Run(workspace_id=workflow.workspace_id, workflow=workflow, workflow_name=workflow.name,
              status=RunStatus.RUNNING, input=run_input, created_by=actor, started_at=now, max_cost_usd=max_cost,
              max_tokens=max_tokens, priority=priority)
    step = StepExecution(run=run, key=first.name, name=first.name, type=first.type, branch="", visit=1,
                         max_attempts=first.retry.max_attempts, ready_at=now, state={}, status=StepStatus.READY,
                         dispatched_at=now if can_publish() else None, priority=priority)
    hotpath.start(
        run, step,
        RunEvent(run=run, kind="run_started", actor=actor,
                 data={"workflow": workflow.name, "version": workflow.version}),
        RunEvent(run=run, kind="step_ready", step_key=first.name, data={"type": first.type}))
    Effects(dispatch=[step.pk], status_changes=[(run.pk, RunStatus.RUNNING)],
            priorities={step.pk: priority} if priority else {}).publish()
    return run


def run_key(workflow: Workflow, wf: WorkflowSpec, run_input: Any) -> str:
    """The run's concurrency key ("" without ``concurrency``); a key that does not render
    refuses the start, naming ``concurrency.key``."""
    if wf.concurrency is None:
        return ""
    context = {"input": run_input, "run": {"workflow": workflow.name, "version": workflow.version}}
    try:
        return flow.render_key(flow.run_prefix(workflow.workspace_id, workflow.name), wf.concurrency.key, context)
    except TemplateProblem as exc:
        raise StartError(f"cannot start {workflow}: its concurrency key does not render",
                         [("concurrency.key", str(exc))]) from None


def create_run(workflow: Workflow, run_input: Any, fx: Effects, *, idempotency_key: str | None = None,
               parent_step: StepExecution | None = None, actor: str = "",
               budget: dict[str, Any] | None = None, priority: int | None = None) -> tuple[Run, bool]:
    """Insert a run and activate its first step inside the caller's transaction.

    A workflow with ``concurrency`` whose key has no free slot (or has runs queued ahead)
    gets a ``queued`` run instead: no step, admitted when a slot frees (runs.engine.flow).
    (run, False) when a run with the same idempotency key exists (also when two starts
    race: the unique constraint decides)."""
    wf = spec_for(workflow)
    max_cost, max_tokens = checked(workflow, wf, run_input, idempotency_key, budget, priority)
    if priority is None:
        # A child run inherits its parent's priority unless its definition sets one.
        priority = wf.priority if wf.priority or parent_step is None else parent_step.priority
    concurrency_key = run_key(workflow, wf, run_input)
    if idempotency_key:
        existing = Run.objects.filter(workspace_id=workflow.workspace_id, workflow_name=workflow.name,
                                      idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing, False
    # A run with a concurrency key is inserted queued; the transaction's flush starts it at
    # once if its key has a free slot and nobody waits ahead of it (transitions.admit_pending).
    queued = bool(concurrency_key)
    now = t.now()
    try:
        # The savepoint only serves the idempotency race below; without a key an
        # IntegrityError is re-raised and rolls back the caller's transaction anyway.
        with transaction.atomic() if idempotency_key else contextlib.nullcontext():
            run = Run.objects.create(
                workspace_id=workflow.workspace_id, workflow=workflow, workflow_name=workflow.name,
                status=RunStatus.QUEUED if queued else RunStatus.RUNNING, input=run_input,
                idempotency_key=idempotency_key or None,
                parent_run_id=parent_step.run_id if parent_step else None, parent_step=parent_step,
                created_by=actor, started_at=None if queued else now, max_cost_usd=max_cost, max_tokens=max_tokens,
                priority=priority, concurrency_key=concurrency_key,
            )
    except IntegrityError:
        if not idempotency_key:
            raise
        existing = Run.objects.get(workspace_id=workflow.workspace_id, workflow_name=workflow.name,
                                   idempotency_key=idempotency_key)
        return existing, False
    run.workflow = workflow
    if queued:
        assert wf.concurrency is not None
        fx.queued_here[run.pk] = RunEvent(
            run_id=run.pk, kind="run_queued", actor=actor, message="waiting for a concurrency slot",
            data={"workflow": workflow.name, "version": workflow.version, "concurrency_key": concurrency_key,
                  "limit": wf.concurrency.limit, **({"parent_run": str(parent_step.run_id)} if parent_step else {})})
        fx.admit_run_keys.add(concurrency_key)
        return run, True
    fx.event(run.pk, "run_started", actor=actor,
             data={"workflow": workflow.name, "version": workflow.version,
                   **({"parent_run": str(parent_step.run_id)} if parent_step else {})})
    fx.status_changes.append((run.pk, RunStatus.RUNNING))
    t.activate(run, wf, wf.steps[0], fx)
    return run, True


def create_runs(workflow: Workflow, items: list[tuple[Any, Decimal | None, int | None, str | None]], fx: Effects,
                *, actor: str = "", priority: int | None = None) -> list[Run]:
    """Insert many runs of one workflow inside the caller's transaction, set-based.

    ``items`` are (input, max_cost, max_tokens, idempotency_key), checked already. When the
    first step is a work step: the rows ``create_run`` and ``activate`` write for each run
    (run, ready first step, ``run_started`` and ``step_ready``), three INSERTs for all of
    them; otherwise ``create_run`` for each. An idempotency key taken meanwhile raises
    IntegrityError (the caller retries)."""
    wf = spec_for(workflow)
    first = wf.steps[0]
    inline = step_types.get(first.type)
    # (A new run has no rows: its first step is visit 1 even where a jump can come back to it.)
    if wf.concurrency is None and inline is not None and not inline.work and first.type not in t.CONTROL_TYPES:
        return _park_runs(workflow, wf, inline, items, fx, actor=actor, priority=priority)
    if not step_types.is_work(first.type) or wf.concurrency is not None or first.concurrency is not None:
        runs = []
        for run_input, _cost, _tokens, key in items:
            budget = {"max_cost_usd": _cost, "max_tokens": _tokens}
            runs.append(create_run(workflow, run_input, fx, idempotency_key=key, actor=actor, priority=priority,
                                   budget={k: str(v) for k, v in budget.items() if v is not None})[0])
        return runs
    priority = wf.priority if priority is None else priority
    now = t.now()
    runs = _insert_runs(workflow, items, actor=actor, priority=priority, now=now)
    dispatched = now if can_publish() else None
    steps = [StepExecution(run_id=run.pk, key=first.name, name=first.name, type=first.type, branch="", visit=1,
                           max_attempts=first.retry.max_attempts, ready_at=now, state={}, status=StepStatus.READY,
                           dispatched_at=dispatched, priority=priority) for run in runs]
    rows.insert(StepExecution, steps)
    started = {"workflow": workflow.name, "version": workflow.version}
    for run, step in zip(runs, steps, strict=True):
        fx.event(run.pk, "run_started", actor=actor, data=dict(started))
        fx.event(run.pk, "step_ready", first.name, data={"type": first.type})
        fx.status_changes.append((run.pk, RunStatus.RUNNING))
        fx.dispatch.append(step.pk)
        if priority:
            fx.priorities[step.pk] = priority
    return runs


def _insert_runs(workflow: Workflow, items: list[tuple[Any, Decimal | None, int | None, str | None]], *,
                 actor: str, priority: int, now: Any) -> list[Run]:
    """The batch's runs (``running``, started ``now``), in one INSERT."""
    runs = [Run(workspace_id=workflow.workspace_id, workflow=workflow, workflow_name=workflow.name,
                status=RunStatus.RUNNING, input=run_input, idempotency_key=key or None, created_by=actor,
                started_at=now, max_cost_usd=max_cost, max_tokens=max_tokens, priority=priority)
            for run_input, max_cost, max_tokens, key in items]
    rows.insert(Run, runs)
    return runs


def _park_runs(workflow: Workflow, wf: WorkflowSpec, inline: step_types.StepType,
               items: list[tuple[Any, Decimal | None, int | None, str | None]], fx: Effects, *, actor: str,
               priority: int | None) -> list[Run]:
    """``create_runs`` when the first step is inline (an approval): the runs and their first
    steps in one INSERT each, the step type's ``activate_many`` (one INSERT of its requests),
    then — for the steps that wait, the common case — one UPDATE of the steps and one of the
    runs (now ``waiting``), with the history rows and signals ``create_run`` and
    ``transitions.activate`` write for each. Any other outcome takes
    ``transitions.apply_outcome`` for its run, as a single start would."""
    first = wf.steps[0]
    priority = wf.priority if priority is None else priority
    now = t.now()
    runs = _insert_runs(workflow, items, actor=actor, priority=priority, now=now)
    steps = [StepExecution(run_id=run.pk, key=first.name, name=first.name, type=first.type, branch="", visit=1,
                           max_attempts=first.retry.max_attempts, ready_at=now, state={},
                           status=StepStatus.RUNNING, started_at=now, priority=priority) for run in runs]
    rows.insert(StepExecution, steps)
    started = {"workflow": workflow.name, "version": workflow.version}
    for run in runs:
        run.workflow = workflow
        fx.event(run.pk, "run_started", actor=actor, data=dict(started))
        fx.status_changes.append((run.pk, RunStatus.RUNNING))
    pairs = list(zip(runs, steps, strict=True))
    outcomes = inline.activate_many(pairs, first, [t.template_context(run, step) for run, step in pairs])
    if outcomes is None:
        for run, step in pairs:
            t.start_inline(run, wf, first, step, fx)
        return runs
    parked: list[tuple[Run, StepExecution, step_types.Wait]] = []
    for (run, step), outcome in zip(pairs, outcomes, strict=True):
        if isinstance(outcome, step_types.Wait):
            parked.append((run, step, outcome))
        else:
            t.apply_outcome(run, wf, first, step, outcome, fx)
    _wait_many(parked, fx, now)
    return runs


def _wait_many(parked: list[tuple[Run, StepExecution, step_types.Wait]], fx: Effects, now: Any) -> None:
    """``transitions.apply_outcome`` for a ``Wait`` of many new first steps, then
    ``refresh_run_status`` (their only open step waits: each run is ``waiting``)."""
    if not parked:
        return
    states = [(step, {**step.state, **outcome.state}, outcome.wake_at) for _, step, outcome in parked]
    updated = rows.update_each(
        StepExecution, "id", {"status": StepStatus.RUNNING}, {"status": StepStatus.WAITING},
        {"state": [(step.pk, state) for step, state, _ in states],
         "wake_at": [(step.pk, wake_at) for step, _, wake_at in states]})
    if updated != len(states):  # the rows were inserted by this transaction
        raise IllegalTransition("a new first step changed under its run's transaction")
    waiting = [run.pk for run, _, _ in parked]
    if Run.objects.filter(pk__in=waiting, status=RunStatus.RUNNING).update(status=RunStatus.WAITING) != len(waiting):
        raise IllegalTransition("a new run changed under its transaction")
    for (run, step, _), (_, state, wake_at) in zip(parked, states, strict=True):
        step.status, step.state, step.wake_at = StepStatus.WAITING, state, wake_at
        if wake_at is not None:
            delay = (wake_at - now).total_seconds()
            if delay <= 60:
                fx.wakes.append((step.pk, delay))
        fx.event(run.pk, "step_waiting", step.key, data={"wake_at": wake_at.isoformat() if wake_at else None})
        fx.event(run.pk, f"run_{RunStatus.WAITING}")
        fx.status_changes.append((run.pk, RunStatus.WAITING))
        run.status = RunStatus.WAITING


def start_child_run(parent: Run, step: StepExecution, name: str, version: int | None, run_input: Any,
                    fx: Effects) -> Run:
    """Start the child run of a ``workflow`` step inside the parent's transaction."""
    try:
        workflow = resolve_workflow(name, workspace=parent.workspace_id, version=version)
    except NotFound as exc:
        raise StartError(str(exc)) from None
    run, _ = create_run(workflow, run_input, fx, parent_step=step, actor=f"run:{parent.pk}")
    return run
