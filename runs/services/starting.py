"""Starting runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction

from runs.definitions import spec_for
from runs.engine import hotpath, starting
from runs.engine.effects import Effects
from runs.engine.flow import priority_problem
from runs.errors import NotFound, StartError
from runs.models import Run, Workflow, Workspace


@dataclass
class StartResult:
    run: Run
    created: bool


def resolve_workflow(name: str, *, workspace: Workspace | int | None = None, version: int | None = None) -> Workflow:
    return starting.resolve_workflow(name, workspace=workspace, version=version)


def start_run(name: str, run_input: Any = None, *, workspace: Workspace | int | None = None,
              version: int | None = None, idempotency_key: str | None = None, actor: str = "",
              budget: dict[str, Any] | None = None, priority: int | None = None) -> StartResult:
    """Start a run of the latest (or given) version of ``name``.

    Callable inside the caller's own transaction: the run exists exactly when that
    transaction commits, and its first step is published only then. The same
    idempotency key (per workspace and workflow) returns the same run, also when two
    starts race: the database's unique constraint decides. ``priority`` (-100..100)
    overrides the definition's: higher first wherever work waits (runs.engine.flow).
    """
    try:
        workflow = starting.resolve_workflow(name, workspace=workspace, version=version)
    except NotFound as exc:
        raise StartError(str(exc), [("workflow", str(exc))]) from None
    run_input = run_input if run_input is not None else {}
    if idempotency_key is None and hotpath.available():
        run = starting.start_in_one_statement(workflow, run_input, actor=actor, budget=budget, priority=priority)
        if run is not None:
            return StartResult(run, True)
    with transaction.atomic():
        fx = Effects()
        run, created = starting.create_run(workflow, run_input, fx, idempotency_key=idempotency_key, actor=actor,
                                           budget=budget, priority=priority)
        fx.flush()
        if run.concurrency_key and created:  # the flush admitted it, or it waits queued
            run.refresh_from_db(fields=["status", "started_at"])
    return StartResult(run, created)


MAX_BATCH = 10_000


@dataclass
class BatchItem:
    """One run of a batch start: its input and, optionally, its idempotency key."""

    input: Any = None
    idempotency_key: str | None = None


def check_batch(workflow: Workflow, items: Any, *, budget: dict[str, Any] | None = None) -> list[tuple[Any, Any, Any,
                                                                                                   str | None]]:
    """Check every item of a batch before anything is written; the checked (input, max_cost,
    max_tokens, key) per item. A ``StartError`` names each bad item by index and field
    (``items[3].input.email``)."""
    if not isinstance(items, (list, tuple)):
        raise StartError("cannot start a batch: items must be a list", [("items", "must be a list")])
    if not items:
        raise StartError("cannot start a batch: no items", [("items", "must hold at least one item")])
    if len(items) > MAX_BATCH:
        raise StartError(f"cannot start a batch: at most {MAX_BATCH} items per call",
                         [("items", f"at most {MAX_BATCH} items per call (got {len(items)})")])
    wf = spec_for(workflow)
    checked: list[tuple[Any, Any, Any, str | None]] = []
    errors: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        if not isinstance(item, BatchItem):
            errors.append((f"items[{index}]", "must be a batch item (input and idempotency_key)"))
            continue
        run_input = item.input if item.input is not None else {}
        try:
            max_cost, max_tokens = starting.checked(workflow, wf, run_input, item.idempotency_key, budget)
        except StartError as exc:
            errors.extend((f"items[{index}].{path}", message) for path, message in exc.errors)
            continue
        checked.append((run_input, max_cost, max_tokens, item.idempotency_key))
        if len(errors) >= 50:
            break
    if errors:
        raise StartError(f"cannot start a batch of {workflow}: invalid items; nothing was started", errors[:50])
    return checked


def start_runs(name: str, items: Any, *, workspace: Workspace | int | None = None, version: int | None = None,
               actor: str = "", budget: dict[str, Any] | None = None,
               priority: int | None = None) -> list[StartResult]:
    """Start many runs of one workflow in one transaction, set-based (a few INSERTs for all).

    Every item is checked first (input schema, idempotency key, budget): one bad item is a
    ``StartError`` naming its index and field, and nothing is started. An item whose
    idempotency key names an existing run (or an earlier item of the same batch) gets that
    run back with ``created`` False. Results are in the order of ``items``; the first steps
    are published after the commit.
    """
    try:
        workflow = starting.resolve_workflow(name, workspace=workspace, version=version)
    except NotFound as exc:
        raise StartError(str(exc), [("workflow", str(exc))]) from None
    if priority is not None and (problem := priority_problem(priority)):
        raise StartError(f"cannot start a batch of {workflow}: bad priority", [("priority", problem)])
    checked = check_batch(workflow, items, budget=budget)
    for attempt in (1, 2):
        try:
            return _start_checked(workflow, checked, actor, priority)
        except IntegrityError:
            if attempt == 2:
                raise
            # Another start took one of the keys meanwhile: again, finding it this time.
    raise AssertionError("unreachable")


def _start_checked(workflow: Workflow, checked: list[tuple[Any, Any, Any, str | None]],
                   actor: str, priority: int | None = None) -> list[StartResult]:
    with transaction.atomic():
        keys = {key for *_, key in checked if key}
        by_key: dict[str, Run] = {}
        if keys:
            by_key = {str(run.idempotency_key): run for run in Run.objects.filter(
                workspace_id=workflow.workspace_id, workflow_name=workflow.name, idempotency_key__in=keys)}
        fresh: list[tuple[Any, Any, Any, str | None]] = []
        plan: list[str | None] = []  # per item: the key of a run made elsewhere, or None (a new run, in order)
        taken = set(by_key)
        for item in checked:
            key = item[3]
            if key and key in taken:
                plan.append(key)
                continue
            if key:
                taken.add(key)
            fresh.append(item)
            plan.append(None)
        fx = Effects()
        made = starting.create_runs(workflow, fresh, fx, actor=actor, priority=priority) if fresh else []
        fx.flush()
    new = iter(made)
    results: list[StartResult] = []
    for key in plan:
        if key is None:
            run = next(new)
            if run.idempotency_key:
                by_key.setdefault(run.idempotency_key, run)
            results.append(StartResult(run, True))
        else:
            results.append(StartResult(by_key[key], False))
    return results
