"""Starting runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction

from runs.engine import hotpath, starting
from runs.engine.effects import Effects
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
              budget: dict[str, Any] | None = None) -> StartResult:
    """Start a run of the latest (or given) version of ``name``.

    Callable inside the caller's own transaction: the run exists exactly when that
    transaction commits, and its first step is published only then. The same
    idempotency key (per workspace and workflow) returns the same run, also when two
    starts race: the database's unique constraint decides.
    """
    try:
        workflow = starting.resolve_workflow(name, workspace=workspace, version=version)
    except NotFound as exc:
        raise StartError(str(exc), [("workflow", str(exc))]) from None
    run_input = run_input if run_input is not None else {}
    if idempotency_key is None and hotpath.available():
        run = starting.start_in_one_statement(workflow, run_input, actor=actor, budget=budget)
        if run is not None:
            return StartResult(run, True)
    with transaction.atomic():
        fx = Effects()
        run, created = starting.create_run(workflow, run_input, fx, idempotency_key=idempotency_key, actor=actor,
                                           budget=budget)
        fx.flush()
    return StartResult(run, created)
