"""What a recorded fact means for its run: the next step, a failure, the run's status.

Every function here runs inside ``transaction.atomic`` with the run's row locked
(``lock_run``): the run row is the one lock that serialises everything that happens
to a run — a step's commit, a fan-in, a control action, a decision — on PostgreSQL
(``SELECT … FOR NO KEY UPDATE``) and on SQLite (``BEGIN IMMEDIATE``). The lock is
``NO KEY UPDATE`` so that inserting a row that references the run (a history row, an
event match) never waits for it: only another engine transaction does. The lock order
is in docs/operations.md.

Publishing happens after commit: the caller passes an ``Effects`` and ends with
``Effects.flush``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

from django.db import connection, transaction

from runs.definitions import END, StepSpec, WorkflowSpec, spec_for
from runs.models import RUN_ACTIVE, IllegalTransition, Run, RunEvent, RunStatus
from steps import clock
from steps import types as step_types
from steps.models import STEP_HOLDING, STEP_OPEN, StepExecution, StepStatus
from steps.templating import TemplateProblem, evaluate, render_value

from . import fanout, flow, hotpath, reopening
from .dispatch import can_publish
from .effects import Effects, on_flush_admit
from .revisits import revisitable

logger = logging.getLogger("stevora.engine")

CONTROL_TYPES = frozenset({"condition", "parallel", "map", "workflow"})
LIVE = (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED)


# --- the run lock and the clock -------------------------------------------------------------


def lock_run(run_id: Any) -> Run:
    """Lock and return the run (the serialisation point of everything in it), with its
    workflow; inside a transaction. Run.DoesNotExist if there is none."""
    if connection.vendor == "postgresql" and connection.in_atomic_block:
        # The same SELECT … FOR NO KEY UPDATE, prepared: it opens every general-path commit.
        run = hotpath.lock_run(run_id)
        if run is None:
            raise Run.DoesNotExist(f"no run {run_id}")
        return run
    return Run.objects.select_for_update(of=("self",), no_key=True).select_related("workflow").get(pk=run_id)


def now() -> Any:
    return clock.now()


def workflow_spec(run: Run) -> WorkflowSpec:
    return spec_for(run.workflow)


# --- templates ------------------------------------------------------------------------------


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


def error_dict(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, **extra}


def spec_of(wf: WorkflowSpec, row: StepExecution) -> StepSpec:
    """The definition of ``row``'s step; a row whose name the definition lacks is an error, not a guess."""
    spec = wf.by_name.get(row.name)
    if spec is None and row.name.endswith("[]"):
        owner = wf.by_name.get(row.name[:-2])
        spec = owner.item if owner is not None else None
    if spec is None:
        raise IllegalTransition(f"step {row.key} is not in workflow {wf.name}")
    return spec


def parent_open(row: StepExecution) -> bool:
    """True when every fan-out step above ``row`` is still waiting on its children."""
    parent_id = row.parent_id
    while parent_id is not None:
        got = StepExecution.objects.filter(pk=parent_id).values_list("status", "parent_id").first()
        if got is None or got[0] != StepStatus.WAITING:
            return False
        parent_id = got[1]
    return True


def _visit_key(run: Run, name: str) -> tuple[str, int]:
    visits = StepExecution.objects.filter(run_id=run.pk, name=name).count() + 1
    return (name if visits == 1 else f"{name}#{visits}"), visits


# --- activation ------------------------------------------------------------------------------


def activate(run: Run, wf: WorkflowSpec, spec: StepSpec, fx: Effects, *, parent: StepExecution | None = None,
             branch: str = "", item_index: int | None = None, item: Any = None,
             status: str = StepStatus.READY) -> StepExecution | None:
    """Make ``spec`` the current step of its sequence: insert its row and start it.

    Work steps become ``ready`` (and are published after commit, or taken by the
    committing worker); inline and control steps are decided right here.
    Returns the new row, or None when the run (or the parent) failed instead (max_visits).
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
                fail_parent(run, wf, parent, key, error, fx)
            else:
                finish_run(run, wf, fx, RunStatus.FAILED, error={**error, "step": key})
            return None
    t = now()
    work = step_types.is_work(spec.type)
    row = StepExecution(
        run_id=run.pk, key=key, name=spec.name, type=spec.type, parent=parent, branch=branch,
        item_index=item_index, visit=visit, max_attempts=spec.retry.max_attempts, ready_at=t,
        state={"item": item} if item_index is not None else {}, priority=run.priority,
    )
    if work and status == StepStatus.READY and spec.concurrency is not None:
        queue_step(run, spec, row, fx)
        return row
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
            row.dispatched_at = t if can_publish() else None
            row.save(force_insert=True)
            if run.status != RunStatus.PAUSED:
                fx.dispatch.append(row.pk)
                if row.priority:
                    fx.priorities[row.pk] = row.priority
        fx.event(run.pk, "step_ready", key, data={"type": spec.type})
        return row
    if status == StepStatus.PENDING:
        row.status = StepStatus.PENDING
        row.save(force_insert=True)
        return row
    row.status = StepStatus.RUNNING
    row.started_at = t
    row.save(force_insert=True)
    start_inline(run, wf, spec, row, fx)
    return row


def queue_step(run: Run, spec: StepSpec, row: StepExecution, fx: Effects, *, pending: bool = False) -> bool:
    """A work step with ``concurrency``: insert it ``queued`` under its rendered key (no
    message, no worker); the transaction's flush admits it at once if a slot is free and
    nobody waits ahead of it (``admit_pending``). ``pending``: ``row`` exists, a map item
    held back by ``max_concurrency`` (pending -> queued); False if it was not pending."""
    concurrency = spec.concurrency
    assert concurrency is not None
    prefix = flow.step_prefix(run.workspace_id, run.workflow_name, spec.name)
    try:
        row.concurrency_key = flow.render_key(prefix, concurrency.key, template_context(run, row))
    except TemplateProblem as exc:
        # Fail closed, not open: the step shares one key with every other such step.
        row.concurrency_key = flow.render_key(prefix, "<key error>", {})
        fx.event(run.pk, "concurrency_key_error", row.key, message=f"concurrency.key: {exc}; the step queues "
                                                                   "under one shared key instead")
    row.priority = run.priority
    if pending:
        if StepExecution.objects.filter(pk=row.pk, status=StepStatus.PENDING).update(
                status=StepStatus.QUEUED, concurrency_key=row.concurrency_key, priority=row.priority,
                ready_at=now()) != 1:
            return False
        row.status = StepStatus.QUEUED
    else:
        row.status = StepStatus.QUEUED
        row.save(force_insert=True)
    fx.queued_here[row.pk] = RunEvent(run_id=run.pk, kind="step_queued", step_key=row.key,
                                      message="waiting for a concurrency slot",
                                      data={"type": spec.type, "concurrency_key": row.concurrency_key,
                                            "limit": concurrency.limit})
    fx.admit_step_keys.add(row.concurrency_key)
    return True


def release_step_slots(keys: set[str], fx: Effects) -> None:
    """Steps holding these concurrency keys ended (or parked): their next waiters are
    admitted when the transaction flushes."""
    fx.admit_step_keys.update(k for k in keys if k)


def admit_pending(fx: Effects) -> None:
    """``Effects.flush``: admit the waiters of every key this transaction queued on or freed,
    under the admission lock — taken here, after every run lock the transaction blocked on
    (docs/operations.md, the lock order). An admission may queue or free more (a run's
    first step with ``concurrency``; a run that ends at once): until nothing is left."""
    if not connection.in_atomic_block:  # the lock must last until the admissions commit
        with transaction.atomic():
            admit_pending(fx)
        return
    flow.lock_admissions()
    while fx.admit_run_keys or fx.admit_step_keys:
        if fx.admit_run_keys:
            key = min(fx.admit_run_keys)
            fx.admit_run_keys.discard(key)
            fx.admitted += admit_runs(key, fx)
        else:
            key = min(fx.admit_step_keys)
            fx.admit_step_keys.discard(key)
            fx.admitted += flow.admit_steps(key, fx)


def admit_runs(key: str, fx: Effects) -> int:
    """Start the next queued runs of ``key`` while it has free slots (priority, then creation
    order), in the caller's transaction, under the admission lock (``admit_pending``); their
    first steps are published after commit.

    A queued run is one of three: a new run (its first step starts), a fork
    (``forked_from_step`` starts; the kept steps are there already) or a retried run (its
    ``error`` still names the failed step, which ``reopening`` reopens now)."""
    if not key:
        return 0
    limit = flow.run_limit(key)
    free = limit - flow.run_holders(key)
    admitted = 0
    if free <= 0:
        return 0
    for run_id in flow.queued_runs(key, free):
        if admitted >= free:
            break
        if not flow.lock_queued_run(run_id):
            continue  # busy (being cancelled): the next release or the sweep decides
        run = Run.objects.select_related("workflow").get(pk=run_id)
        started = now()
        retry_from = (run.error or {}).get("step") if run.error else None
        fields: dict[str, Any] = {"status": RunStatus.RUNNING}
        if retry_from:
            fields["error"] = None  # it started before: it keeps its started_at
        else:
            fields["started_at"] = started
        if Run.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(**fields) != 1:
            continue
        run.status, run.error = RunStatus.RUNNING, None
        if not retry_from:
            run.started_at = started
        _admitted_event(run, key, limit, started, retried=bool(retry_from), fx=fx)
        fx.status_changes.append((run.pk, RunStatus.RUNNING))
        wf = workflow_spec(run)
        if retry_from:
            reopening.reopen_failed_run(run, wf, retry_from, fx)
        elif run.forked_from_id and run.forked_from_step:
            activate(run, wf, wf.by_name[run.forked_from_step], fx)
        else:
            activate(run, wf, wf.steps[0], fx)
        admitted += 1
    return admitted


def _admitted_event(run: Run, key: str, limit: int, started: Any, *, retried: bool, fx: Effects) -> None:
    at_once = fx.queued_here.pop(run.pk, None) is not None  # queued by this transaction: a slot was free
    if retried:
        if not at_once:  # (at once: the retry's control_retry row says it all)
            fx.event(run.pk, "run_running", message="retry admitted: a concurrency slot is free",
                     data={"admitted": True, "concurrency_key": key, "limit": limit})
        return
    data: dict[str, Any] = {"workflow": run.workflow_name, "version": run.workflow.version}
    if run.parent_run_id:
        data["parent_run"] = str(run.parent_run_id)
    if run.forked_from_id:
        data.update(forked_from=str(run.forked_from_id), from_step=run.forked_from_step)
    if at_once:
        fx.event(run.pk, "run_started", actor=run.created_by, data=data)
    else:
        waited = (started - run.created_at).total_seconds()
        fx.event(run.pk, "run_started", message="admitted: a concurrency slot is free",
                 data={**data, "admitted": True, "concurrency_key": key, "limit": limit,
                       "waited_seconds": round(waited, 3)})


def back_to_ready(run: Run, row: StepExecution, fx: Effects, from_statuses: tuple[str, ...],
                  **fields: Any) -> str | None:
    """Put an existing work step back to ``ready`` (guarded on ``from_statuses``, with
    ``fields``) and ring its doorbell after commit — or, when it has a concurrency key,
    to ``queued``: the transaction's flush admits it if its key has a free slot and nobody
    waits ahead (``admit_pending``), like a new step. A paused run's step is not rung
    (resume does it). The new status, or None if the row was no longer in ``from_statuses``."""
    t = now()
    if row.concurrency_key:
        if StepExecution.objects.filter(pk=row.pk, status__in=from_statuses).update(
                status=StepStatus.QUEUED, ready_at=t, dispatched_at=None, **fields) != 1:
            return None
        fx.queued_here[row.pk] = RunEvent(run_id=run.pk, kind="step_queued", step_key=row.key,
                                          message="waiting for a concurrency slot",
                                          data={"type": row.type, "concurrency_key": row.concurrency_key})
        fx.admit_step_keys.add(row.concurrency_key)
        return StepStatus.QUEUED
    ring = run.status != RunStatus.PAUSED
    if StepExecution.objects.filter(pk=row.pk, status__in=from_statuses).update(
            status=StepStatus.READY, ready_at=t, dispatched_at=t if ring and can_publish() else None,
            **fields) != 1:
        return None
    if ring:
        fx.dispatch.append(row.pk)
        if row.priority:
            fx.priorities[row.pk] = row.priority
    return StepStatus.READY


def start_inline(run: Run, wf: WorkflowSpec, spec: StepSpec, row: StepExecution, fx: Effects) -> None:
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
        fanout.start_parallel(run, wf, spec, row, fx)
        return None
    if spec.type == "map":
        return fanout.start_map(run, wf, spec, row, fx)
    if spec.type == "workflow":
        return fanout.start_child(run, spec, row, fx)
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


# --- control flow ------------------------------------------------------------------------------


def advance(run: Run, wf: WorkflowSpec, row: StepExecution, spec: StepSpec, fx: Effects,
            goto: str | None = None) -> None:
    """``row`` completed: start its successor, or finish its sequence."""
    if run.status not in LIVE:
        return
    if row.parent_id is not None and not parent_open(row):
        return  # the fan-out above it ended (a sibling failed): nothing more starts under it
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
        # (Not ``row.parent``: a map step's row carries its whole list of items.)
        parent = StepExecution.objects.defer("input").get(pk=row.parent_id) if row.parent_id else None
        activate(run, wf, target, fx, parent=parent, branch=row.branch)
        if run.status == RunStatus.WAITING:
            refresh_run_status(run, fx)
        return
    if row.parent_id is None:
        _finish_top_level(run, wf, row, fx)
    elif row.item_index is not None:
        fanout.map_item_done(run, wf, row, fx)
    else:
        fanout.branch_done(run, wf, row, fx)


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


# --- failure -------------------------------------------------------------------------------------


def step_failed(run: Run, wf: WorkflowSpec, row: StepExecution, spec: StepSpec, error: dict[str, Any],
                fx: Effects) -> None:
    """``row`` failed for good: take its failure branch, or fail what contains it."""
    if run.status not in LIVE:
        return
    if row.parent_id is not None and not parent_open(row):
        return  # its fan-out already ended: neither a failure branch nor a second failure starts
    if spec.on_failure and spec.on_failure != END:
        fx.event(run.pk, "failure_branch", row.key, data={"to": spec.on_failure})
        activate(run, wf, wf.by_name[spec.on_failure], fx, parent=row.parent if row.parent_id else None,
                 branch=row.branch)
        return
    if spec.on_failure == END:
        advance(run, wf, row, spec, fx, goto=END)
        return
    if row.parent_id is not None:
        fail_parent(run, wf, StepExecution.objects.defer("input").get(pk=row.parent_id), row.key, error, fx)
        return
    # A fan-out failed because of one of its children: name that child (retry_run reopens it).
    finish_run(run, wf, fx, RunStatus.FAILED, error={**error, "step": error.get("step") or row.key})


def fail_parent(run: Run, wf: WorkflowSpec, parent: StepExecution, child_key: str, error: dict[str, Any],
                fx: Effects) -> None:
    """A child of the fan-out ``parent`` failed: close its other children, then fail it."""
    if parent.status != StepStatus.WAITING:
        return
    cancel_open_steps(run, fx, parent=parent, reason=f"{child_key} failed")
    root = error.get("step", child_key)
    parent_error = error_dict("child_failed", f"{child_key} failed: {error.get('message', '')}",
                              step=root, cause=error)
    apply_outcome(run, wf, spec_of(wf, parent), parent, step_types.Fail(parent_error), fx,
                  from_status=StepStatus.WAITING)


def cancel_open_steps(run: Run, fx: Effects, *, parent: StepExecution | None = None, reason: str = "") -> int:
    """Cancel every open step of the run (or below ``parent``), remembering what each was.

    Set-based: one UPDATE per previous status, whatever the number of steps. Waiting
    inline steps tell their type (an approval request closes); child runs of cancelled
    ``workflow`` steps are cancelled after commit, and by the reconciler if that is lost.
    """
    if parent is not None:
        qs = StepExecution.objects.filter(pk__in=_descendant_ids(parent), status__in=STEP_OPEN)
    else:
        qs = StepExecution.objects.filter(run_id=run.pk, status__in=STEP_OPEN)
    rows = list(qs.values_list("id", "key", "status", "type", "state"))
    if not rows:
        return 0
    released = set(qs.filter(status__in=STEP_HOLDING).exclude(concurrency_key="")
                   .values_list("concurrency_key", flat=True))
    t = now()
    for step_id, _key, status, type_name, state in rows:
        step_type = step_types.get(type_name)
        # Work types park too (an llm step waiting for a tool decision): each closes its own requests.
        if status == StepStatus.WAITING and step_type is not None:
            step_type.cancel(StepExecution(pk=step_id, run_id=run.pk, type=type_name, state=state, status=status))
        if type_name == "workflow" and state.get("child_run"):
            fx.after_commit.append(_cancel_child_later(state["child_run"], reason))
    for status in {row[2] for row in rows}:
        StepExecution.objects.filter(pk__in=[row[0] for row in rows if row[2] == status], status=status).update(
            status=StepStatus.CANCELLED, finished_at=t, lease_owner="", lease_until=None, wake_at=None,
            error=error_dict("cancelled", reason or "cancelled", previous_status=status),
        )
    for _, key, status, _, _ in rows:
        fx.event(run.pk, "step_cancelled", key, message=reason, data={"previous_status": status})
    release_step_slots(released, fx)
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
        cancel_run_now(child_run_id, actor="parent", reason=reason or "parent step cancelled")

    return cancel


def cancel_run_now(run_id: Any, *, actor: str, reason: str) -> bool:
    """Cancel an unfinished run in its own transaction (False: it had ended already)."""
    with transaction.atomic():
        try:
            run = lock_run(run_id)
        except Run.DoesNotExist:
            return False
        if run.is_terminal:
            return False
        fx = Effects()
        finish_run(run, workflow_spec(run), fx, RunStatus.CANCELLED, actor=actor,
                   error=error_dict("cancelled", reason))
        fx.event(run.pk, "control_cancel", actor=actor)
        fx.flush()
    return True


# --- run status ------------------------------------------------------------------------------------


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
        fanout.notify_parent(run, fx)  # the parent's run lock before the admission lock (lock order)
    if run.concurrency_key:
        fx.admit_run_keys.add(run.concurrency_key)  # its slot is free: the next queued run starts at flush


on_flush_admit(admit_pending)
