"""The engine: decides what runs next, inside the transaction that recorded a fact.

Every function here runs inside ``transaction.atomic`` with the run's row locked
(``lock_run``): the run row is the one lock that serialises everything that happens
to a run — a step's commit, a fan-in, a control action, a decision — on PostgreSQL
(``SELECT … FOR UPDATE``) and on SQLite (``BEGIN IMMEDIATE``). Because every path
takes it first, and a child run's completion takes the child's lock before its
parent's while cancellations reach children only after commit, there is one lock
order and no deadlock.

Publishing happens after commit: the caller passes an ``Effects`` and hands it to
``Effects.publish`` in ``transaction.on_commit``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from steps import types as step_types
from steps.models import STEP_OPEN, StepExecution, StepStatus

from .definitions import END, StepSpec, WorkflowSpec, spec_for
from .models import RUN_ACTIVE, IllegalTransition, Run, RunEvent, RunStatus, Workflow
from .revisits import revisitable
from .templating import TemplateProblem, evaluate, render_value

logger = logging.getLogger("stevora.engine")

CONTROL_TYPES = frozenset({"condition", "parallel", "map", "workflow"})
MAX_CHILD_DEPTH = 10  # runs below a top-level run (a workflow step that starts its own workflow)


@dataclass
class Effects:
    """What a transaction decided to do once it commits."""

    dispatch: list[int] = field(default_factory=list)
    countdowns: list[tuple[int, float]] = field(default_factory=list)
    # Waiting steps due within a minute get a countdown message; later ones only the sweep.
    wakes: list[tuple[int, float]] = field(default_factory=list)
    history: list[RunEvent] = field(default_factory=list)
    after_commit: list[Any] = field(default_factory=list)
    # The fast path: the committing worker may take one new work step itself.
    claim_owner: str = ""
    lease_seconds: float = 30.0
    claimed: StepExecution | None = None
    # Runs that changed status, for signals (webhooks, waiters).
    status_changes: list[tuple[Any, str]] = field(default_factory=list)

    def event(self, run_id: Any, kind: str, step_key: str = "", *, actor: str = "", message: str = "",
              data: dict[str, Any] | None = None) -> None:
        self.history.append(RunEvent(run_id=run_id, kind=kind, step_key=step_key, actor=actor,
                                     message=message, data=data or {}))

    def flush(self) -> None:
        """Write the history rows and schedule the publish; call last, inside the transaction."""
        if self.history:
            RunEvent.objects.bulk_create(self.history)
            self.history = []
        if self.dispatch or self.countdowns or self.wakes or self.after_commit or self.status_changes:
            transaction.on_commit(self.publish)

    def publish(self) -> None:
        from steps.dispatch import dispatch_steps, dispatch_wakes

        dispatch_steps(self.dispatch, self.countdowns)
        dispatch_wakes(self.wakes)
        for fn in self.after_commit:
            fn()
        if self.status_changes:
            from steps.dispatch import fault_point

            from .signals import run_status_changed

            fault_point("before_notices")  # crash tests: committed, no receiver has run
            for run_id, status in self.status_changes:
                run_status_changed.send(sender=Run, run_id=run_id, status=status)


# --- helpers ---------------------------------------------------------------------------


def lock_run(run_id: Any) -> Run:
    """Lock and return the run (the serialisation point of everything in it), with its
    workflow; inside a transaction. Run.DoesNotExist if there is none."""
    from steps import fastcommit

    if connection.vendor == "postgresql" and connection.in_atomic_block:
        # The same SELECT … FOR UPDATE, prepared: it opens every general-path commit.
        run = fastcommit.lock_run(run_id)
        if run is None:
            raise Run.DoesNotExist(f"no run {run_id}")
        return run
    return Run.objects.select_for_update(of=("self",)).select_related("workflow").get(pk=run_id)


def now() -> Any:
    return timezone.now()


def workflow_spec(run: Run) -> WorkflowSpec:
    return spec_for(run.workflow)


class StepsView(Mapping[str, Any]):
    """``steps.<name>`` in templates: the latest visit of each step, loaded on first use.

    The step being rendered is left out, so in a loop ``steps.<itself>`` is its previous
    visit (its own row has no output yet).
    """

    def __init__(self, run_id: Any, exclude: int | None = None) -> None:
        self._run_id = run_id
        self._exclude = exclude
        self._data: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            data: dict[str, Any] = {}
            qs = StepExecution.objects.filter(run_id=self._run_id)
            if self._exclude is not None:
                qs = qs.exclude(pk=self._exclude)
            rows = qs.order_by("id").values("name", "key", "status", "output", "error", "attempt")
            for row in rows:
                data[row["name"]] = {
                    "output": row["output"], "status": row["status"], "error": row["error"],
                    "key": row["key"], "attempts": row["attempt"],
                }
            self._data = data
        return self._data

    def __getitem__(self, name: str) -> Any:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def template_context(run: Run, step: StepExecution | None = None, **extra: Any) -> dict[str, Any]:
    context: dict[str, Any] = {
        "input": run.input,
        "steps": StepsView(run.pk, exclude=step.pk if step is not None else None),
        "run": {"id": str(run.pk), "workflow": run.workflow_name, "version": run.workflow.version},
    }
    if step is not None and step.item_index is not None:
        context["item"] = step.state.get("item")
        context["index"] = step.item_index
    context.update(extra)
    return context


def _id(value: int | None) -> int:
    assert value is not None
    return value


def error_dict(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, **extra}


def _visit_key(run: Run, name: str) -> tuple[str, int]:
    visits = StepExecution.objects.filter(run_id=run.pk, name=name).count() + 1
    return (name if visits == 1 else f"{name}#{visits}"), visits


# --- activation ------------------------------------------------------------------------


def activate(run: Run, wf: WorkflowSpec, spec: StepSpec, fx: Effects, *, parent: StepExecution | None = None,
             branch: str = "", item_index: int | None = None, item: Any = None,
             status: str = StepStatus.READY) -> StepExecution | None:
    """Make ``spec`` the current step of its sequence: insert its row and start it.

    Work steps become ``ready`` (and are published after commit, or taken by the
    committing worker); inline and control steps are decided right here.
    Returns the new row, or None when the run failed instead (max_visits).
    """
    if item_index is not None:
        assert parent is not None
        key, visit = f"{parent.key}[{item_index}]", 1
    elif spec.name not in revisitable(wf):
        key, visit = spec.name, 1  # no jump leads back here: the first visit, no COUNT needed
    else:
        key, visit = _visit_key(run, spec.name)
        if visit > spec.max_visits:
            error = error_dict("max_visits_exceeded",
                               f"step {spec.name!r} would be visited a {visit}th time; max_visits is "
                               f"{spec.max_visits}")
            fx.event(run.pk, "step_refused", key, message=error["message"])
            if parent is not None:
                _fail_parent(run, wf, parent, key, error, fx)
            else:
                finish_run(run, wf, fx, RunStatus.FAILED, error={**error, "step": key})
            return None
    t = now()
    work = step_types.is_work(spec.type)
    row = StepExecution(
        run_id=run.pk, key=key, name=spec.name, type=spec.type, parent=parent, branch=branch,
        item_index=item_index, visit=visit, max_attempts=spec.retry.max_attempts, ready_at=t,
        state={"item": item} if item_index is not None else {},
    )
    if work and status == StepStatus.READY:
        if fx.claim_owner and fx.claimed is None and run.status == RunStatus.RUNNING:
            # Fast path: the committing worker runs this step next without a broker round trip.
            row.status = StepStatus.RUNNING
            row.lease_owner = fx.claim_owner
            row.lease_until = t + timedelta(seconds=fx.lease_seconds)
            row.attempt = 1
            row.started_at = t
            row.dispatched_at = t
            row.save(force_insert=True)
            fx.claimed = row
        else:
            row.status = StepStatus.READY
            row.dispatched_at = t if _can_publish() else None
            row.save(force_insert=True)
            if run.status != RunStatus.PAUSED:
                fx.dispatch.append(row.pk)
        fx.event(run.pk, "step_ready", key, data={"type": spec.type})
        return row
    if status == StepStatus.PENDING:
        row.status = StepStatus.PENDING
        row.save(force_insert=True)
        return row
    row.status = StepStatus.RUNNING
    row.started_at = t
    row.save(force_insert=True)
    _start_inline(run, wf, spec, row, fx)
    return row


def _can_publish() -> bool:
    from steps.dispatch import can_publish

    return can_publish()


def _start_inline(run: Run, wf: WorkflowSpec, spec: StepSpec, row: StepExecution, fx: Effects) -> None:
    try:
        outcome = _inline_outcome(run, wf, spec, row, fx)
    except TemplateProblem as exc:
        outcome = step_types.Fail(error_dict("template_error", str(exc)))
    if outcome is None:  # fan-out or child run started; the row is waiting on them
        return
    apply_outcome(run, wf, spec, row, outcome, fx)


def _inline_outcome(run: Run, wf: WorkflowSpec, spec: StepSpec, row: StepExecution,
                    fx: Effects) -> step_types.Outcome | None:
    if spec.type == "condition":
        result = bool(evaluate(spec.raw["if"], template_context(run, row)))
        goto = spec.raw.get("then") if result else spec.raw.get("else")
        return step_types.Complete({"result": result, "next": goto}, goto=goto)
    if spec.type == "parallel":
        _start_parallel(run, wf, spec, row, fx)
        return None
    if spec.type == "map":
        return _start_map(run, wf, spec, row, fx)
    if spec.type == "workflow":
        return _start_child(run, spec, row, fx)
    step_type = step_types.get(spec.type)
    if step_type is None or step_type.work:
        return step_types.Fail(error_dict("unknown_step_type", f"no executor for step type {spec.type!r}"))
    return step_type.activate(run, row, spec, template_context(run, row))


def apply_outcome(run: Run, wf: WorkflowSpec, spec: StepSpec, row: StepExecution, outcome: step_types.Outcome,
                  fx: Effects, *, from_status: str = StepStatus.RUNNING) -> None:
    """Record an inline step's outcome (guarded on ``from_status``) and move on."""
    t = now()
    qs = StepExecution.objects.filter(pk=row.pk, status=from_status)
    if isinstance(outcome, step_types.Complete):
        if qs.update(status=StepStatus.COMPLETED, output=outcome.output, finished_at=t, wake_at=None) != 1:
            raise IllegalTransition(f"step {row.key} is no longer {from_status}")
        row.status, row.output, row.finished_at = StepStatus.COMPLETED, outcome.output, t
        fx.event(run.pk, "step_completed", row.key, data={"type": spec.type})
        advance(run, wf, row, spec, fx, goto=outcome.goto)
    elif isinstance(outcome, step_types.Wait):
        state = {**row.state, **outcome.state}
        if qs.update(status=StepStatus.WAITING, wake_at=outcome.wake_at, state=state) != 1:
            raise IllegalTransition(f"step {row.key} is no longer {from_status}")
        row.status, row.wake_at, row.state = StepStatus.WAITING, outcome.wake_at, state
        if outcome.wake_at is not None:
            delay = (outcome.wake_at - t).total_seconds()
            if delay <= 60:
                fx.wakes.append((row.pk, delay))
        fx.event(run.pk, "step_waiting", row.key,
                 data={"wake_at": outcome.wake_at.isoformat() if outcome.wake_at else None})
        refresh_run_status(run, fx)
    else:
        if qs.update(status=StepStatus.FAILED, error=outcome.error, finished_at=t, wake_at=None) != 1:
            raise IllegalTransition(f"step {row.key} is no longer {from_status}")
        row.status, row.error = StepStatus.FAILED, outcome.error
        fx.event(run.pk, "step_failed", row.key, message=outcome.error.get("message", ""), data=outcome.error)
        step_failed(run, wf, row, spec, outcome.error, fx)


# --- control flow ----------------------------------------------------------------------


def _start_parallel(run: Run, wf: WorkflowSpec, spec: StepSpec, row: StepExecution, fx: Effects) -> None:
    StepExecution.objects.filter(pk=row.pk).update(
        status=StepStatus.WAITING, state={"done": {}, "branches": list(spec.branches)})
    row.status = StepStatus.WAITING
    row.state = {"done": {}, "branches": list(spec.branches)}
    fx.event(run.pk, "fan_out", row.key, data={"branches": list(spec.branches)})
    for branch, steps in spec.branches.items():
        activate(run, wf, steps[0], fx, parent=row, branch=branch)
        if run.is_terminal:
            return
    # A branch that parked (an approval) judged the run while later branches had no rows yet.
    refresh_run_status(run, fx)


def _start_map(run: Run, wf: WorkflowSpec, spec: StepSpec, row: StepExecution,
               fx: Effects) -> step_types.Outcome | None:
    over = spec.raw["over"]
    items = render_value(over, template_context(run, row))  # a literal list may hold templates too
    if not isinstance(items, list):
        return step_types.Fail(error_dict(
            "template_error", f"map {spec.name!r}: 'over' must evaluate to a list, got {type(items).__name__}"))
    if not items:
        return step_types.Complete([])
    assert spec.item is not None
    limit = int(spec.raw.get("max_concurrency") or len(items))
    state = {"total": len(items), "max_concurrency": limit}
    StepExecution.objects.filter(pk=row.pk).update(status=StepStatus.WAITING, state=state)
    row.status, row.state = StepStatus.WAITING, state
    fx.event(run.pk, "fan_out", row.key, data={"items": len(items), "max_concurrency": limit})
    for index, item in enumerate(items):
        activate(run, wf, spec.item, fx, parent=row, item_index=index, item=item,
                 status=StepStatus.READY if index < limit else StepStatus.PENDING)
    refresh_run_status(run, fx)  # as for parallel: an item that parked judged too early
    return None


def _start_child(run: Run, spec: StepSpec, row: StepExecution, fx: Effects) -> step_types.Outcome | None:
    from .services import StartError, start_run_locked

    raw = spec.raw
    depth, ancestor = 1, run.parent_run_id
    while ancestor is not None and depth <= MAX_CHILD_DEPTH:
        depth += 1
        ancestor = Run.objects.filter(pk=ancestor).values_list("parent_run_id", flat=True).first()
    if depth > MAX_CHILD_DEPTH:
        # A workflow that (indirectly) starts itself would otherwise nest without end.
        return step_types.Fail(error_dict(
            "child_start_failed", f"child runs nest deeper than {MAX_CHILD_DEPTH} levels; "
            f"does {raw['workflow']!r} start itself?"))
    context = template_context(run, row)
    child_input = render_value(raw.get("input", {}), context)
    try:
        child = start_run_locked(
            workspace_id=run.workspace_id, name=raw["workflow"], version=raw.get("version"),
            run_input=child_input, parent_step=row, fx=fx, actor=f"run:{run.pk}",
        )
    except StartError as exc:
        return step_types.Fail(error_dict("child_start_failed", str(exc), errors=getattr(exc, "errors", None)))
    if child.is_terminal:
        # The child ended inside this transaction (only inline steps, or failed at once); it
        # could not tell this step, which was not waiting yet.
        StepExecution.objects.filter(pk=row.pk).update(state={"child_run": str(child.pk)})
        row.state = {"child_run": str(child.pk)}
        return _child_outcome(child)
    StepExecution.objects.filter(pk=row.pk).update(status=StepStatus.WAITING, state={"child_run": str(child.pk)})
    row.status, row.state = StepStatus.WAITING, {"child_run": str(child.pk)}
    fx.event(run.pk, "child_started", row.key, data={"child_run": str(child.pk)})
    refresh_run_status(run, fx)
    return None


def advance(run: Run, wf: WorkflowSpec, row: StepExecution, spec: StepSpec, fx: Effects,
            goto: str | None = None) -> None:
    """``row`` completed: start its successor, or finish its sequence."""
    if run.status not in (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED):
        return
    target_name = goto if goto is not None else spec.next
    if target_name == END:
        target = None
    elif target_name is not None:
        target = wf.by_name[target_name]
    elif row.item_index is not None:
        target = None
    else:
        target = wf.following(spec)
    if target is not None:
        parent = row.parent if row.parent_id else None
        activate(run, wf, target, fx, parent=parent, branch=row.branch)
        if run.status == RunStatus.WAITING and target is not None:
            refresh_run_status(run, fx)
        return
    if row.parent_id is None:
        _finish_top_level(run, wf, row, fx)
    elif row.item_index is not None:
        _map_item_done(run, wf, row, fx)
    else:
        _branch_done(run, wf, row, fx)


def _finish_top_level(run: Run, wf: WorkflowSpec, last: StepExecution, fx: Effects) -> None:
    if wf.has_output:
        try:
            output = render_value(wf.output, template_context(run))
        except TemplateProblem as exc:
            finish_run(run, wf, fx, RunStatus.FAILED, error=error_dict("template_error", f"output: {exc}"))
            return
    elif last.type == "condition":
        prior = (StepExecution.objects.filter(run_id=run.pk, parent__isnull=True, status=StepStatus.COMPLETED)
                 .exclude(type="condition").order_by("-id").values_list("output", flat=True).first())
        output = prior
    else:
        output = last.output
    finish_run(run, wf, fx, RunStatus.COMPLETED, output=output)


def _branch_done(run: Run, wf: WorkflowSpec, last: StepExecution, fx: Effects) -> None:
    parent = StepExecution.objects.get(pk=_id(last.parent_id))
    if parent.status != StepStatus.WAITING:
        return
    done = dict(parent.state.get("done", {}))
    output = last.output
    if last.type == "condition":  # as at the top level: a condition is never a sequence's output
        output = (StepExecution.objects.filter(parent_id=parent.pk, branch=last.branch, status=StepStatus.COMPLETED)
                  .exclude(type="condition").order_by("-id").values_list("output", flat=True).first())
    done[last.branch] = output
    state = {**parent.state, "done": done}
    StepExecution.objects.filter(pk=parent.pk).update(state=state)
    parent.state = state
    fx.event(run.pk, "branch_done", parent.key, data={"branch": last.branch})
    if len(done) == len(parent.state.get("branches", [])):
        # The join: decided here, in the transaction of the branch that finished last.
        output = {branch: done[branch] for branch in parent.state["branches"]}
        apply_outcome(run, wf, wf.by_name[parent.name], parent, step_types.Complete(output), fx,
                      from_status=StepStatus.WAITING)
    else:
        # The other branches may all be parked (an approval, an event): then the run waits.
        refresh_run_status(run, fx)


def _map_item_done(run: Run, wf: WorkflowSpec, item: StepExecution, fx: Effects) -> None:
    parent = StepExecution.objects.get(pk=_id(item.parent_id))
    if parent.status != StepStatus.WAITING:
        return
    # Each item's completion looks only at the items still open, through the index on
    # (parent, status, item_index): at most max_concurrency active ones and the next
    # pending ones. (Counting every item here would make a map of n items cost n².)
    children = StepExecution.objects.filter(parent_id=parent.pk)
    active = children.filter(status__in=(StepStatus.READY, StepStatus.RUNNING, StepStatus.WAITING)).count()
    limit = int(parent.state.get("max_concurrency") or 1)
    pending = list(children.filter(status=StepStatus.PENDING).order_by("item_index")[: max(limit - active, 1)])
    if pending and active < limit:
        spec = wf.by_name[parent.name].item
        assert spec is not None
        for child in pending:
            _promote_pending(run, wf, spec, child, fx)
        return
    if active or pending:
        refresh_run_status(run, fx)  # the items left may all be parked (child runs waiting)
        return
    outputs = list(children.order_by("item_index").values_list("output", flat=True))
    apply_outcome(run, wf, wf.by_name[parent.name], parent, step_types.Complete(outputs), fx,
                  from_status=StepStatus.WAITING)


def _promote_pending(run: Run, wf: WorkflowSpec, spec: StepSpec, child: StepExecution, fx: Effects) -> None:
    t = now()
    if step_types.is_work(spec.type):
        updated = StepExecution.objects.filter(pk=child.pk, status=StepStatus.PENDING).update(
            status=StepStatus.READY, ready_at=t, dispatched_at=t if _can_publish() else None)
        if updated and run.status != RunStatus.PAUSED:
            fx.dispatch.append(child.pk)
        return
    StepExecution.objects.filter(pk=child.pk, status=StepStatus.PENDING).update(
        status=StepStatus.RUNNING, ready_at=t, started_at=t)
    child.status = StepStatus.RUNNING
    _start_inline(run, wf, spec, child, fx)


# --- failure -----------------------------------------------------------------------------


def step_failed(run: Run, wf: WorkflowSpec, row: StepExecution, spec: StepSpec, error: dict[str, Any],
                fx: Effects) -> None:
    """``row`` failed for good: take its failure branch, or fail what contains it."""
    if run.status not in (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED):
        return
    if spec.on_failure and spec.on_failure != END:
        fx.event(run.pk, "failure_branch", row.key, data={"to": spec.on_failure})
        activate(run, wf, wf.by_name[spec.on_failure], fx, parent=row.parent if row.parent_id else None,
                 branch=row.branch)
        return
    if spec.on_failure == END:
        advance(run, wf, row, spec, fx, goto=END)
        return
    if row.parent_id is not None:
        _fail_parent(run, wf, StepExecution.objects.get(pk=_id(row.parent_id)), row.key, error, fx)
        return
    # A fan-out failed because of one of its children: name that child (retry_run reopens it).
    finish_run(run, wf, fx, RunStatus.FAILED, error={**error, "step": error.get("step") or row.key})


def _fail_parent(run: Run, wf: WorkflowSpec, parent: StepExecution, child_key: str, error: dict[str, Any],
                 fx: Effects) -> None:
    if parent.status != StepStatus.WAITING:
        return
    cancel_open_steps(run, fx, parent=parent, reason=f"{child_key} failed")
    root = error.get("step", child_key)
    parent_error = error_dict("child_failed", f"{child_key} failed: {error.get('message', '')}",
                              step=root, cause=error)
    apply_outcome(run, wf, wf.by_name[parent.name], parent, step_types.Fail(parent_error), fx,
                  from_status=StepStatus.WAITING)


def cancel_open_steps(run: Run, fx: Effects, *, parent: StepExecution | None = None, reason: str = "") -> int:
    """Cancel every open step of the run (or below ``parent``), remembering what it was."""
    if parent is not None:
        ids = _descendant_ids(parent)
        qs = StepExecution.objects.filter(pk__in=ids, status__in=STEP_OPEN)
    else:
        qs = StepExecution.objects.filter(run_id=run.pk, status__in=STEP_OPEN)
    rows = list(qs.only("id", "key", "status", "type", "state"))
    t = now()
    for row in rows:
        step_type = step_types.get(row.type)
        if row.status == StepStatus.WAITING and step_type is not None and not step_type.work:
            step_type.cancel(row)
        if row.type == "workflow" and row.state.get("child_run"):
            fx.after_commit.append(_cancel_child_later(row.state["child_run"], reason))
        StepExecution.objects.filter(pk=row.pk, status=row.status).update(
            status=StepStatus.CANCELLED, finished_at=t, lease_owner="", lease_until=None,
            error=error_dict("cancelled", reason or "cancelled", previous_status=row.status),
        )
        fx.event(run.pk, "step_cancelled", row.key, message=reason, data={"previous_status": row.status})
    return len(rows)


def _descendant_ids(parent: StepExecution) -> list[int]:
    ids: list[int] = []
    frontier = [parent.pk]
    while frontier:
        children = list(StepExecution.objects.filter(parent_id__in=frontier).values_list("id", flat=True))
        ids.extend(children)
        frontier = children
    return ids


def _cancel_child_later(child_run_id: str, reason: str) -> Any:
    def cancel() -> None:
        from .services import cancel_run

        try:
            cancel_run(child_run_id, actor="parent", reason=reason or "parent step cancelled")
        except IllegalTransition:
            pass

    return cancel


# --- run status ----------------------------------------------------------------------------


def refresh_run_status(run: Run, fx: Effects) -> None:
    """running <-> waiting: a run is waiting when all it has open is waiting."""
    if run.status not in (RunStatus.RUNNING, RunStatus.WAITING):
        return
    open_statuses = set(
        StepExecution.objects.filter(run_id=run.pk, status__in=STEP_OPEN).values_list("status", flat=True).distinct()
    )
    target = RunStatus.WAITING if open_statuses == {StepStatus.WAITING} else RunStatus.RUNNING
    if target != run.status:
        Run.objects.filter(pk=run.pk, status=run.status).update(status=target)
        fx.event(run.pk, f"run_{target}")
        fx.status_changes.append((run.pk, target))
        run.status = target


def finish_run(run: Run, wf: WorkflowSpec | None, fx: Effects, status: str, *, output: Any = None,
               error: dict[str, Any] | None = None, actor: str = "") -> None:
    """Move the run to a terminal status, close what is open, and tell a parent run."""
    allowed = (*RUN_ACTIVE, RunStatus.PAUSED)
    t = now()
    if Run.objects.filter(pk=run.pk, status__in=allowed).update(
            status=status, output=output, error=error, finished_at=t) != 1:
        raise IllegalTransition(f"run {run.pk} is {run.status}; it cannot become {status}")
    run.status, run.output, run.error, run.finished_at = status, output, error, t
    if status != RunStatus.COMPLETED:
        cancel_open_steps(run, fx, reason=f"run {status}")
    fx.event(run.pk, f"run_{status}", actor=actor, message=(error or {}).get("message", ""),
             data={"error": error} if error else {})
    fx.status_changes.append((run.pk, status))
    if run.parent_step_id is not None:
        _notify_parent(run, fx)


def _notify_parent(child: Run, fx: Effects) -> None:
    """A child run ended: complete or fail the parent's ``workflow`` step (child lock, then parent)."""
    step = StepExecution.objects.filter(pk=_id(child.parent_step_id)).only("run_id").first()
    if step is None:
        return
    parent_run = lock_run(step.run_id)
    step = StepExecution.objects.get(pk=_id(child.parent_step_id))
    if step.status != StepStatus.WAITING or parent_run.status not in (*RUN_ACTIVE, RunStatus.PAUSED):
        return
    parent_wf = workflow_spec(parent_run)
    spec = _spec_of(parent_wf, step)
    apply_outcome(parent_run, parent_wf, spec, step, _child_outcome(child), fx, from_status=StepStatus.WAITING)
    if parent_run.status == RunStatus.WAITING:
        refresh_run_status(parent_run, fx)


def _child_outcome(child: Run) -> step_types.Outcome:
    if child.status == RunStatus.COMPLETED:
        return step_types.Complete(child.output)
    return step_types.Fail(error_dict(
        f"child_{child.status}", f"child run {child.pk} ({child.workflow_name}) {child.status}"
        + (f": {child.error.get('message')}" if child.error else ""),
        child_run=str(child.pk)))


def _spec_of(wf: WorkflowSpec, row: StepExecution) -> StepSpec:
    spec = wf.by_name.get(row.name)
    if spec is None and row.name.endswith("[]"):
        owner = wf.by_name.get(row.name[:-2])
        spec = owner.item if owner is not None else None
    if spec is None:
        raise IllegalTransition(f"step {row.key} is not in workflow {wf.name}")
    return spec


def spec_of(wf: WorkflowSpec, row: StepExecution) -> StepSpec:
    return _spec_of(wf, row)


__all__ = [
    "Effects", "activate", "advance", "apply_outcome", "cancel_open_steps", "finish_run", "lock_run",
    "refresh_run_status", "spec_of", "step_failed", "template_context", "workflow_spec", "Workflow",
]
