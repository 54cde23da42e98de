"""Parallel branches, map items and child runs, and their joins (DESIGN §6).

Branch steps and map items are child rows of their fan-out step (``parent``); they
are published as one Celery ``group``. The join is decided in the transaction of the
child that finishes last, serialised by the run lock: no chord, no counters outside
the rows. Once a fan-out step, its run or an ancestor has ended, nothing new starts
under it: activation stops, a claim of a child finds it closed and cancels it
(``executor``), and child runs of closed steps are cancelled (after commit, and by
``recovery.settle_child_runs`` if that is lost).
"""

from __future__ import annotations

import uuid

from runs.definitions import StepSpec, WorkflowSpec
from runs.errors import StartError
from runs.models import RUN_ACTIVE, Run, RunStatus
from steps import types as step_types
from steps.models import StepExecution, StepStatus
from steps.templating import render_value

from . import mapitems, starting
from . import transitions as t
from .dispatch import can_publish
from .effects import Effects

MAX_CHILD_DEPTH = 10  # runs below a top-level run (a workflow step that starts its own workflow)
_ACTIVE_ITEM = (StepStatus.QUEUED, StepStatus.READY, StepStatus.RUNNING, StepStatus.WAITING)
MADE, FINISHED, ITEMS_KEY = mapitems.MADE, mapitems.FINISHED, mapitems.ITEMS_KEY


def _still_waiting(run: Run, row: StepExecution, child: StepExecution | None) -> bool:
    """After activating ``child`` under ``row``: may the fan-out start its next child?"""
    if run.is_terminal:
        return False
    if child is not None and child.status not in (StepStatus.FAILED, StepStatus.CANCELLED):
        return True  # it is ready, running, waiting or done: nothing closed the fan-out
    # The child failed (or was refused) inline: that may have failed the fan-out step.
    status = StepExecution.objects.filter(pk=row.pk).values_list("status", flat=True).first()
    return status == StepStatus.WAITING


def start_parallel(run: Run, wf: WorkflowSpec, spec: StepSpec, row: StepExecution, fx: Effects) -> None:
    state = {"done": {}, "branches": list(spec.branches)}
    StepExecution.objects.filter(pk=row.pk).update(status=StepStatus.WAITING, state=state)
    row.status, row.state = StepStatus.WAITING, state
    fx.event(run.pk, "fan_out", row.key, data={"branches": list(spec.branches)})
    for branch, steps in spec.branches.items():
        child = t.activate(run, wf, steps[0], fx, parent=row, branch=branch)
        if not _still_waiting(run, row, child):
            return
    # A branch that parked (an approval) judged the run while later branches had no rows yet.
    t.refresh_run_status(run, fx)


def start_map(run: Run, wf: WorkflowSpec, spec: StepSpec, row: StepExecution,
              fx: Effects) -> step_types.Outcome | None:
    """Fan out over the rendered ``over`` list, making only the first ``max_concurrency``
    item rows: the list is stored once, as the map step's ``input``, and each item's row is
    made when a slot frees (``map_item_done``). Starting a map of 100,000 items writes
    ``max_concurrency`` item rows, not 100,000."""
    items = render_value(spec.raw["over"], t.template_context(run, row))  # a literal list may hold templates
    if not isinstance(items, list):
        return step_types.Fail(t.error_dict(
            "template_error", f"map {spec.name!r}: 'over' must evaluate to a list, got {type(items).__name__}"))
    if not items:
        return step_types.Complete([])
    assert spec.item is not None
    limit = int(spec.raw.get("max_concurrency") or len(items))
    first = min(limit, len(items))
    state = {"total": len(items), "max_concurrency": limit, MADE: first, FINISHED: 0, ITEMS_KEY: uuid.uuid4().hex}
    StepExecution.objects.filter(pk=row.pk).update(status=StepStatus.WAITING, state=state, input=items)
    row.status, row.state = StepStatus.WAITING, state
    mapitems.remember(row.pk, state, items)
    fx.event(run.pk, "fan_out", row.key, data={"items": len(items), "max_concurrency": limit})
    for index in range(first):
        child = t.activate(run, wf, spec.item, fx, parent=row, item_index=index, item=items[index])
        if not _still_waiting(run, row, child):
            return None  # an item failed the map (or the run) while it was being started
    t.refresh_run_status(run, fx)  # as for parallel: an item that parked judged too early
    return None


def start_child(run: Run, spec: StepSpec, row: StepExecution, fx: Effects) -> step_types.Outcome | None:
    raw = spec.raw
    depth, ancestor = 1, run.parent_run_id
    while ancestor is not None and depth <= MAX_CHILD_DEPTH:
        depth += 1
        ancestor = Run.objects.filter(pk=ancestor).values_list("parent_run_id", flat=True).first()
    if depth > MAX_CHILD_DEPTH:
        # A workflow that (indirectly) starts itself would otherwise nest without end.
        return step_types.Fail(t.error_dict(
            "child_start_failed", f"child runs nest deeper than {MAX_CHILD_DEPTH} levels; "
            f"does {raw['workflow']!r} start itself?"))
    child_input = render_value(raw.get("input", {}), t.template_context(run, row))
    try:
        child = starting.start_child_run(run, row, raw["workflow"], raw.get("version"), child_input, fx)
    except StartError as exc:
        return step_types.Fail(t.error_dict("child_start_failed", str(exc), errors=exc.errors or None))
    if child.is_terminal:
        # The child ended inside this transaction (only inline steps, or failed at once); it
        # could not tell this step, which was not waiting yet.
        StepExecution.objects.filter(pk=row.pk).update(state={"child_run": str(child.pk)})
        row.state = {"child_run": str(child.pk)}
        return child_outcome(child)
    StepExecution.objects.filter(pk=row.pk).update(status=StepStatus.WAITING, state={"child_run": str(child.pk)})
    row.status, row.state = StepStatus.WAITING, {"child_run": str(child.pk)}
    fx.event(run.pk, "child_started", row.key, data={"child_run": str(child.pk)})
    t.refresh_run_status(run, fx)
    return None


def branch_done(run: Run, wf: WorkflowSpec, last: StepExecution, fx: Effects) -> None:
    assert last.parent_id is not None
    parent = StepExecution.objects.get(pk=last.parent_id)
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
        t.apply_outcome(run, wf, t.spec_of(wf, parent), parent, step_types.Complete(output), fx,
                        from_status=StepStatus.WAITING)
    else:
        # The other branches may all be parked (an approval, an event): then the run waits.
        t.refresh_run_status(run, fx)


def map_item_done(run: Run, wf: WorkflowSpec, item: StepExecution, fx: Effects) -> None:
    """``item`` completed (under the run lock): count it, make the next item rows the
    freed slot admits, or — when it was the last — join, in this transaction.

    The map step's ``state`` holds the counters: ``made`` item rows exist (indices
    0..made-1), ``finished`` of them completed; made - finished are open (at most
    ``max_concurrency``). Every completion updates them, so the join fires exactly once:
    in the transaction that makes ``finished`` reach ``total``. (``mapitems`` does the same
    in one statement when the item is not the last.)"""
    assert item.parent_id is not None
    # Not the list of items (its ``input``): a map of 100,000 items would read it at each completion.
    parent = StepExecution.objects.defer("input").get(pk=item.parent_id)
    if parent.status != StepStatus.WAITING:
        return
    if MADE not in parent.state:
        _legacy_item_done(run, wf, parent, fx)  # a map started before items were made lazily
        return
    state = dict(parent.state)
    total, limit = int(state["total"]), max(int(state.get("max_concurrency") or 1), 1)
    made, finished = int(state[MADE]), int(state[FINISHED]) + 1
    upto = min(total, finished + limit)
    state.update({MADE: max(made, upto), FINISHED: finished})
    # Written before the new items start: an item decided inline counts itself on top of it.
    StepExecution.objects.filter(pk=parent.pk).update(state=state)
    parent.state = state
    if finished >= total:
        outputs = list(StepExecution.objects.filter(parent_id=parent.pk).order_by("item_index")
                       .values_list("output", flat=True))
        t.apply_outcome(run, wf, t.spec_of(wf, parent), parent, step_types.Complete(outputs), fx,
                        from_status=StepStatus.WAITING)
        return
    if upto <= made:
        t.refresh_run_status(run, fx)  # the items left may all be parked (child runs waiting)
        return
    spec = t.spec_of(wf, parent).item
    assert spec is not None
    items = mapitems.items_of(parent.pk, state)
    for index in range(made, upto):
        child = t.activate(run, wf, spec, fx, parent=parent, item_index=index, item=items[index])
        if not _still_waiting(run, parent, child):
            return  # an inline item failed the map while it was being made


def _legacy_item_done(run: Run, wf: WorkflowSpec, parent: StepExecution, fx: Effects) -> None:
    """Maps started before lazy items have every item row: promote the next pending ones."""
    children = StepExecution.objects.filter(parent_id=parent.pk)
    active = children.filter(status__in=_ACTIVE_ITEM).count()
    limit = int(parent.state.get("max_concurrency") or 1)
    pending = list(children.filter(status=StepStatus.PENDING).order_by("item_index")[: max(limit - active, 1)])
    if pending and active < limit:
        spec = t.spec_of(wf, parent).item
        assert spec is not None
        for child in pending:
            _promote_pending(run, wf, spec, child, fx)
            if run.is_terminal or not t.parent_open(child):
                return  # an inline item failed the map while it was being promoted
        return
    if active or pending:
        t.refresh_run_status(run, fx)  # the items left may all be parked (child runs waiting)
        return
    outputs = list(children.order_by("item_index").values_list("output", flat=True))
    t.apply_outcome(run, wf, t.spec_of(wf, parent), parent, step_types.Complete(outputs), fx,
                    from_status=StepStatus.WAITING)


def _promote_pending(run: Run, wf: WorkflowSpec, spec: StepSpec, child: StepExecution, fx: Effects) -> None:
    now = t.now()
    if step_types.is_work(spec.type) and spec.concurrency is not None:
        t.queue_step(run, spec, child, fx, pending=True)  # its concurrency key decides when it is ready
        return
    if step_types.is_work(spec.type):
        updated = StepExecution.objects.filter(pk=child.pk, status=StepStatus.PENDING).update(
            status=StepStatus.READY, ready_at=now, dispatched_at=now if can_publish() else None)
        if updated and run.status != RunStatus.PAUSED:
            fx.dispatch.append(child.pk)
        return
    StepExecution.objects.filter(pk=child.pk, status=StepStatus.PENDING).update(
        status=StepStatus.RUNNING, ready_at=now, started_at=now)
    child.status = StepStatus.RUNNING
    t.start_inline(run, wf, spec, child, fx)


# --- child runs ----------------------------------------------------------------------------------


def notify_parent(child: Run, fx: Effects) -> None:
    """A child run ended: complete or fail the parent's ``workflow`` step (child lock, then parent)."""
    assert child.parent_step_id is not None
    step = StepExecution.objects.filter(pk=child.parent_step_id).only("run_id").first()
    if step is None:
        return
    parent_run = t.lock_run(step.run_id)
    step = StepExecution.objects.get(pk=child.parent_step_id)
    if step.status != StepStatus.WAITING or parent_run.status not in (*RUN_ACTIVE, RunStatus.PAUSED):
        return
    parent_wf = t.workflow_spec(parent_run)
    t.apply_outcome(parent_run, parent_wf, t.spec_of(parent_wf, step), step, child_outcome(child), fx,
                    from_status=StepStatus.WAITING)
    if parent_run.status == RunStatus.WAITING:
        t.refresh_run_status(parent_run, fx)


def child_outcome(child: Run) -> step_types.Outcome:
    if child.status == RunStatus.COMPLETED:
        return step_types.Complete(child.output)
    return step_types.Fail(t.error_dict(
        f"child_{child.status}", f"child run {child.pk} ({child.workflow_name}) {child.status}"
        + (f": {child.error.get('message')}" if child.error else ""),
        child_run=str(child.pk)))

