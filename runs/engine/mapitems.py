"""Map items made as ``max_concurrency`` admits them, and an item's commit in one statement.

A ``map`` step stores its rendered list once, as its own ``input``, and keeps two counters
in its ``state`` (``fanout.start_map``): ``made`` item rows exist (indices 0..made-1) and
``finished`` of them completed. Starting a map writes at most ``max_concurrency`` item
rows whatever its size; each completion makes the next one (``fanout.map_item_done``).

The common completion — a ``task`` item that is not the last, of a running run — is one
statement here (PostgreSQL), as a sequential step's is (``hotpath.commit_and_claim``)::

    WITH run  AS (SELECT status FROM runs_run WHERE id = … FOR NO KEY UPDATE),
         item AS (SELECT id FROM steps_stepexecution WHERE id = … AND status = 'running'
                    AND lease_owner = … AND attempt = … AND EXISTS (run is running) FOR NO KEY UPDATE),
         par  AS (UPDATE steps_stepexecution SET state = state || {made, finished}
                  WHERE id = <map step> AND status = 'waiting' AND made = … AND finished = …
                    AND EXISTS (SELECT 1 FROM item) RETURNING id),
         done AS (UPDATE steps_stepexecution SET status = 'completed', … WHERE id = … AND EXISTS (par)),
         nxt  AS (INSERT the next item, claimed by this worker, FROM done),
         history AS (INSERT step_completed [, step_ready] FROM done)

Why it is the general commit's protocol:

- the lock order is the general path's: the run row, then the item, then the map step;
- the item's fence is taken with a row lock, which re-reads the newest version of the row
  (READ COMMITTED), so a lease that a sweep recovered meanwhile does not match;
- the map step's counters are compared on its newest version too (an UPDATE re-checks its
  WHERE on the row another transaction committed while this one waited for the run lock):
  if another item counted itself since we read them, nothing is written and we read
  again. Each completion moves ``finished`` by one under the run lock, so the completion
  that makes it reach ``total`` is exactly one, and that one (the join) is never taken
  here: the general commit decides it, with the map's output, in its transaction;
- nothing is written unless every part matched; then the caller runs the general commit,
  which decides as before (a paused or ended run, a closed map, a lost lease).

The item inputs of rows not yet made are read from the map step's ``input``; a process
keeps the last few lists (immutable once the map started; keyed by the step and a token
that ``start_map`` draws), so an item's cost does not grow with the size of its map.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connection
from django.db.models import Field

from runs.definitions import StepSpec
from runs.models import Run, RunEvent, RunStatus
from steps.models import StepExecution, StepStatus

from . import hotpath

MADE, FINISHED, ITEMS_KEY = "made", "finished", "items_key"
NOT_APPLIED = hotpath.NOT_APPLIED
_CACHED_LISTS = 8
_ATTEMPTS = 3  # reads of the counters before leaving a contended completion to the general commit

_lock = threading.Lock()
_lists: OrderedDict[tuple[int, str], list[Any]] = OrderedDict()


def remember(step_id: int, state: dict[str, Any], items: list[Any]) -> None:
    """Keep the list a map step just stored (its items are made from it as slots free)."""
    with _lock:
        _lists[(step_id, str(state.get(ITEMS_KEY, "")))] = items
        _lists.move_to_end((step_id, str(state.get(ITEMS_KEY, ""))))
        while len(_lists) > _CACHED_LISTS:
            _lists.popitem(last=False)


def items_of(step_id: int, state: dict[str, Any]) -> list[Any]:
    """The map step's list of items (its ``input``), read once per process."""
    key = (step_id, str(state.get(ITEMS_KEY, "")))
    with _lock:
        got = _lists.get(key)
        if got is not None:
            _lists.move_to_end(key)
            return got
    items = StepExecution.objects.filter(pk=step_id).values_list("input", flat=True).get()
    if not isinstance(items, list):
        raise ValueError(f"map step {step_id} has no list of items")
    remember(step_id, state, items)
    return items


def applies(row: StepExecution, spec: StepSpec) -> bool:
    """A ``task`` map item whose completion the one statement can record."""
    return (connection.vendor == "postgresql" and row.item_index is not None and row.parent_id is not None
            and row.type == "task" and not row.concurrency_key and spec.concurrency is None and spec.next is None
            and row.run.status == RunStatus.RUNNING and connection.get_autocommit()
            and not connection.in_atomic_block)


def _qn(name: str) -> str:
    return connection.ops.quote_name(name)


@functools.cache
def _read_statement() -> str:
    return (f"SELECT {_qn('key')}, {_qn('status')}, {_qn('state')} FROM {_qn(StepExecution._meta.db_table)} "
            f"WHERE {_qn('id')} = $1")


_FIRST_ROW = 18  # the parameters below, before the rows to insert


@functools.cache
def _statement(with_next: bool) -> str:
    qn = _qn
    steps, runs = qn(StepExecution._meta.db_table), qn(Run._meta.db_table)
    state = qn("state")
    first_event = _FIRST_ROW + (len(hotpath._fields(StepExecution)) if with_next else 0)
    parts = [
        f"run AS (SELECT {qn('status')} FROM {runs} WHERE {qn('id')} = $1 FOR NO KEY UPDATE)",
        f"item AS (SELECT {qn('id')} FROM {steps} WHERE {qn('id')} = $2 AND {qn('status')} = $3 "
        f"AND {qn('lease_owner')} = $4 AND {qn('attempt')} = $5 "
        f"AND EXISTS (SELECT 1 FROM run WHERE {qn('status')} = $6) FOR NO KEY UPDATE)",
        f"par AS (UPDATE {steps} SET {state} = {state} || jsonb_build_object('{MADE}', $7::integer, "
        f"'{FINISHED}', $8::integer) WHERE {qn('id')} = $9 AND {qn('status')} = $10 "
        f"AND {state} -> '{MADE}' = to_jsonb($11::integer) AND {state} -> '{FINISHED}' = to_jsonb($12::integer) "
        f"AND EXISTS (SELECT 1 FROM item) RETURNING {qn('id')})",
        f"done AS (UPDATE {steps} SET {qn('status')} = $13, {qn('output')} = $14, {qn('input')} = $15, "
        f"{qn('error')} = NULL, {qn('finished_at')} = $16, {qn('lease_owner')} = $17, {qn('lease_until')} = NULL "
        f"WHERE {qn('id')} = $2 AND EXISTS (SELECT 1 FROM par) RETURNING {qn('id')})",
    ]
    if with_next:
        parts.append(f"nxt AS ({hotpath._insert_sql(StepExecution, 1, _FIRST_ROW)} RETURNING {qn('id')})")
    parts.append(f"history AS ({hotpath._insert_sql(RunEvent, 2 if with_next else 1, first_event)})")
    tail = f"SELECT {qn('id')} FROM nxt" if with_next else f"SELECT {qn('id')} FROM done"
    return "WITH " + ", ".join(parts) + " " + tail


def commit_item(row: StepExecution, spec: StepSpec, output: Any, rendered: Any, owner: str, t: datetime,
                lease_seconds: float, completed_data: dict[str, Any]) -> StepExecution | None | object:
    """Complete the map item ``row`` (not the last) and make the next item, claimed by
    ``owner``, in one statement. Returns the claimed item, None (completed; no item to
    make), or ``NOT_APPLIED`` (nothing written: the general commit decides)."""
    assert row.parent_id is not None
    db = hotpath._db()

    def prep(model: type[Any], name: str, value: Any) -> Any:
        field: Field[Any, Any] = model._meta.get_field(name)
        return field.get_db_prep_save(value, db)

    seen: tuple[int, int] | None = None
    for _ in range(_ATTEMPTS):
        got = hotpath._execute(db, _read_statement(), [row.parent_id])
        if got is None:
            return NOT_APPLIED
        parent_key, parent_status, state = got
        if isinstance(state, str):  # (a driver without jsonb loading)
            state = json.loads(state)
        if parent_status != StepStatus.WAITING or MADE not in state:
            return NOT_APPLIED
        total, limit = int(state["total"]), max(int(state.get("max_concurrency") or 1), 1)
        made, finished = int(state[MADE]), int(state[FINISHED])
        if (made, finished) == seen:
            return NOT_APPLIED  # the counters did not move: the lease or the run did not match
        seen = (made, finished)
        if finished + 1 >= total:
            return NOT_APPLIED  # the join: decided by the general commit
        upto = min(total, finished + 1 + limit)
        if upto - made > 1:
            return NOT_APPLIED  # more than one slot free (after a retry): the general commit makes them
        nxt: StepExecution | None = None
        params: list[Any] = [
            row.run_id, row.pk, StepStatus.RUNNING, owner, row.attempt, RunStatus.RUNNING,
            max(made, upto), finished + 1, row.parent_id, StepStatus.WAITING, made, finished,
            StepStatus.COMPLETED, prep(StepExecution, "output", output), prep(StepExecution, "input", rendered),
            prep(StepExecution, "finished_at", t), "",
        ]
        assert len(params) == _FIRST_ROW - 1
        if upto > made:
            item = items_of(row.parent_id, state)[made]
            nxt = StepExecution(
                run_id=row.run_id, key=f"{parent_key}[{made}]", name=row.name, type=row.type,
                parent_id=row.parent_id, branch=row.branch, item_index=made, visit=1,
                max_attempts=spec.retry.max_attempts, ready_at=t, state={"item": item},
                status=StepStatus.RUNNING, lease_owner=owner, lease_until=t + timedelta(seconds=lease_seconds),
                attempt=1, started_at=t, dispatched_at=t, priority=row.priority,
            )
            hotpath._values(nxt, params, db)
        hotpath._values(RunEvent(run_id=row.run_id, kind="step_completed", step_key=row.key, data=completed_data),
                        params, db)
        if nxt is not None:
            hotpath._values(RunEvent(run_id=row.run_id, kind="step_ready", step_key=nxt.key,
                                     data={"type": nxt.type}), params, db)
        try:
            done = hotpath._execute(db, _statement(nxt is not None), params)
        except IntegrityError:
            return NOT_APPLIED  # (the next item's row exists: rows disagree with the counters)
        if done is None:
            continue  # another item counted itself first, or the fence did not match: read again
        row.status, row.output, row.finished_at = StepStatus.COMPLETED, output, t
        if nxt is None:
            return None
        nxt.pk = done[0]
        nxt._state.adding = False
        nxt._state.db = db.alias
        nxt.run = row.run
        return nxt
    return NOT_APPLIED
