"""Flow control: concurrency keys and priorities (docs/operations.md "Flow control").

A workflow's ``concurrency: {limit, key}`` bounds its *active runs* per rendered key; a
work step's bounds its *holding steps* (``ready`` or ``running``) per key. What waits
for a slot is a row — a ``queued`` run (no step yet) or a ``queued`` step (no message) —
and holds no worker. The database decides, under one lock:

- a run or step that meets a ``concurrency`` is inserted ``queued``, and every change that
  frees a slot (a run that ends, a step that completes, fails for good, parks or is
  cancelled) names its key; at the end of the transaction (``Effects.flush`` ->
  ``transitions.admit_pending``), under the admission lock, each named key admits its
  waiters while it has free slots, in order: priority (higher first), then creation
  order. A new run or step with a free slot and nobody ahead is so admitted at once, in
  the transaction that created it;
- what comes back asks again: a retried run and a fork are inserted/moved ``queued`` like
  a new run (``transitions.admit_runs`` then reopens the retried run's failed step, or
  starts the fork's ``from_step``), and a work step put back to ready from ``failed``,
  ``cancelled`` or ``waiting`` goes ``queued`` (``transitions.back_to_ready``);
- the reconciler's ``admit_waiting`` sweep re-derives the same admissions from the rows,
  so a crash between a commit and its admission's doorbell, or a path that frees a slot
  without admitting, costs one sweep interval, nothing more.

The lock is one PostgreSQL transaction-level advisory lock for all keys (SQLite's
``BEGIN IMMEDIATE`` serialises writers anyway), taken last, after every run lock the
transaction waits for: one lock cannot deadlock with itself however many keys a commit
touches, and after it other runs' rows are only locked ``SKIP LOCKED`` (a busy run is
passed over and picked up by the next release or the sweep). Its place in the lock order is in docs/operations.md.

Priority is an integer in ``PRIORITY_MIN..PRIORITY_MAX`` (default 0): the database
orders by it exactly; the broker gets a coarse band of it (``dispatch.broker_priority``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from django.db import connection

from runs.definitions import PRIORITY_MAX, PRIORITY_MIN, StepSpec, spec_for
from runs.models import RUN_HOLDING, Run, RunStatus
from steps import clock
from steps.models import STEP_HOLDING, StepExecution, StepStatus
from steps.templating import render_value

from .dispatch import can_publish
from .effects import Effects

logger = logging.getLogger("stevora.flow")

# pg_advisory_xact_lock(bigint): its own key space, apart from the two-int event locks.
_ADMISSION_LOCK = 0x5E7E_F10C
_KEY_LENGTH = 255
# Runs whose queued steps may be admitted (a paused run's stay queued until it resumes).
_ADMITTING_RUNS = (RunStatus.RUNNING, RunStatus.WAITING)


def lock_admissions() -> None:
    """Serialise every admission decision (PostgreSQL; SQLite has one writer). Held to the
    end of the transaction; taken after the run lock of the committing run."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ADMISSION_LOCK])


def priority_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}"
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        return f"must be from {PRIORITY_MIN} to {PRIORITY_MAX} (got {value})"
    return None


def _bounded(prefix: str, rendered: Any) -> str:
    text = rendered if isinstance(rendered, str) else json.dumps(rendered, sort_keys=True, default=str)
    key = f"{prefix}:{text}"
    if len(key) <= _KEY_LENGTH:
        return key
    return f"{prefix[:150]}:sha256:{hashlib.sha256(text.encode()).hexdigest()}"


def render_key(prefix: str, template: str | None, context: dict[str, Any]) -> str:
    """The stored key: ``prefix`` (workspace, workflow, step) and the rendered template.
    Raises TemplateProblem."""
    return _bounded(prefix, "" if template is None else render_value(template, context))


def run_prefix(workspace_id: int, workflow_name: str) -> str:
    return f"{workspace_id}:{workflow_name}"


def step_prefix(workspace_id: int, workflow_name: str, step_name: str) -> str:
    return f"{workspace_id}:{workflow_name}/{step_name}"


def _lock_run_if_free(run_id: Any) -> str | None:
    """Lock another run's row without waiting; its status, or None (busy, or gone)."""
    qs = Run.objects.filter(pk=run_id)
    if connection.vendor == "postgresql":
        qs = qs.select_for_update(skip_locked=True, no_key=True, of=("self",))
    got = qs.values_list("status", flat=True).first()
    return got


# --- steps -----------------------------------------------------------------------------------


def step_holders(key: str) -> int:
    return StepExecution.objects.filter(concurrency_key=key, status__in=STEP_HOLDING).count()


def _step_spec(workflow: Any, name: str) -> StepSpec | None:
    wf = spec_for(workflow)
    spec = wf.by_name.get(name)
    if spec is None and name.endswith("[]"):
        owner = wf.by_name.get(name[:-2])
        spec = owner.item if owner is not None else None
    return spec


def admit_steps(key: str, fx: Effects) -> int:
    """Make the next queued steps of ``key`` ready while it has free slots (priority, then
    creation order); their doorbells ring after commit. Inside a transaction, under
    ``lock_admissions`` (``transitions.admit_pending``)."""
    if not key:
        return 0
    queued = (StepExecution.objects.filter(concurrency_key=key, status=StepStatus.QUEUED,
                                           run__status__in=_ADMITTING_RUNS)
              .order_by("-priority", "id").select_related("run__workflow"))
    first = queued.first()
    if first is None:
        return 0
    spec = _step_spec(first.run.workflow, first.name)
    limit = spec.concurrency.limit if spec is not None and spec.concurrency is not None else 1
    free = limit - step_holders(key)
    if free <= 0:
        return 0
    admitted = 0
    now = clock.now()
    publish = can_publish()
    for step_id, run_id, step_key, priority in queued.values_list("id", "run_id", "key", "priority")[:free + 20]:
        if admitted >= free:
            break
        if _lock_run_if_free(run_id) not in _ADMITTING_RUNS:
            continue  # busy (its next release or the sweep admits it) or no longer admitting
        if StepExecution.objects.filter(pk=step_id, status=StepStatus.QUEUED).update(
                status=StepStatus.READY, ready_at=now, dispatched_at=now if publish else None) != 1:
            continue
        fresh = fx.queued_here.pop(step_id, None)
        if fresh is not None:  # queued by this very transaction, and a slot was free: plain ready
            fx.event(run_id, "step_ready", step_key, data={"type": fresh.data.get("type")})
        else:
            fx.event(run_id, "step_admitted", step_key, message="a concurrency slot is free",
                     data={"concurrency_key": key, "limit": limit})
        fx.dispatch.append(step_id)
        if priority:
            fx.priorities[step_id] = priority
        admitted += 1
    return admitted


# --- runs ------------------------------------------------------------------------------------


def run_holders(key: str) -> int:
    return Run.objects.filter(concurrency_key=key, status__in=RUN_HOLDING).count()


def queued_runs(key: str, free: int) -> list[Any]:
    """The ids of the next queued runs of ``key``, in admission order (a few extra: some may
    be busy)."""
    return list(Run.objects.filter(concurrency_key=key, status=RunStatus.QUEUED)
                .order_by("-priority", "created_at", "id").values_list("id", flat=True)[:free + 20])


def lock_queued_run(run_id: Any) -> bool:
    return _lock_run_if_free(run_id) == RunStatus.QUEUED


def run_limit(key: str) -> int:
    """The limit of ``key``, from the definition of its next queued run (0: none queued)."""
    run = (Run.objects.filter(concurrency_key=key, status=RunStatus.QUEUED).order_by("-priority", "created_at", "id")
           .select_related("workflow").first())
    if run is None:
        return 0
    concurrency = spec_for(run.workflow).concurrency
    return concurrency.limit if concurrency is not None else 1


def waiting_keys(limit: int) -> tuple[list[str], list[str]]:
    """Keys with something queued: (run keys, step keys), for the sweep."""
    runs = list(Run.objects.filter(status=RunStatus.QUEUED).values_list("concurrency_key", flat=True)
                .order_by("concurrency_key").distinct()[:limit])
    steps = list(StepExecution.objects.filter(status=StepStatus.QUEUED).exclude(concurrency_key="")
                 .values_list("concurrency_key", flat=True).order_by("concurrency_key").distinct()[:limit])
    return runs, steps


__all__ = ["admit_steps", "lock_admissions", "priority_problem", "render_key", "run_holders", "step_holders"]
