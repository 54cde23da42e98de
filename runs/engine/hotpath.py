"""The hot paths in one SQL statement each (PostgreSQL), as prepared statements.

The common case of a sequential workflow: a ``task`` step at the top level completes
and its successor is a work step that no jump can bring round again. The general
commit (``executor.commit_success`` with ``transitions``) then costs seven round trips and most of a
millisecond of ORM query building each: BEGIN, lock the run, fenced UPDATE, INSERT
the successor (claimed by this worker), INSERT the history, COMMIT. Here the same
writes are one statement, one implicit transaction::

    WITH run     AS (SELECT status FROM runs_run WHERE id = … FOR NO KEY UPDATE),
         done    AS (UPDATE steps_stepexecution SET status = 'completed', …
                     WHERE id = … AND status = 'running' AND lease_owner = … AND attempt = …
                       AND EXISTS (SELECT 1 FROM run WHERE status = 'running') RETURNING id),
         nxt     AS (INSERT INTO steps_stepexecution (…) SELECT … FROM done RETURNING id),
         history AS (INSERT INTO runs_runevent (…) SELECT … FROM done UNION ALL …)
    SELECT id FROM nxt

Why it is the same protocol (DESIGN §4):

- the run row is locked first (the one lock order of ``transitions.lock_run``): the fence's
  ``EXISTS`` is an init plan, evaluated before the step row is even scanned;
- the fence is the same conditional UPDATE (status running, our lease, our attempt);
  under READ COMMITTED a step that a sweep recovered meanwhile is re-checked on its
  newest version and not updated;
- the successor and both history rows are written only if the fence matched
  (``FROM done``), in the same transaction as the result; nothing is published
  (the successor is claimed by this worker, exactly as ``transitions.activate`` does it);
- if nothing matched (a lost lease, a run that is no longer ``running``: paused,
  cancelled), nothing was written and the caller runs the general commit, which
  decides what to do as before.

The same way, ``commit_and_finish`` completes the last step of a plain top-level run
together with the run (``transitions.finish_run``'s UPDATE; the status signal is sent by the
caller after the statement), ``claim`` is the claim's conditional UPDATE returning the
row joined to its run and workflow, ``start`` inserts a new run with its first step and
history (``starting.create_run``), and ``workflow`` and ``lock_run`` are the two queries
every start and every general-path commit open with. Everything else takes the general
paths; SQLite (embedded) always does. ``tests/test_postgres_hot_paths.py`` runs a
workflow both ways and compares every row.

Each statement's text is fixed, so psycopg prepares it on the server once per connection
(``_execute``; ``STEVORA_DB_PREPARED_STATEMENTS``). Rows are built from model instances
by the models' own fields (``pre_save`` for defaults and ``auto_now``; ``get_db_prep_save``
for JSON and decimals), so new columns with Python defaults are filled here too.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import (
    Field,
    Model,
)
from django.utils import timezone

from runs.definitions import END, StepSpec, WorkflowSpec
from runs.models import DEFAULT_WORKSPACE_SLUG, Run, RunEvent, RunStatus, Workflow, Workspace
from steps import clock
from steps import types as step_types
from steps.models import StepExecution, StepStatus

from .revisits import revisitable
from .rows import AS_IS

_NOT_APPLICABLE = object()


def successor(row: StepExecution, spec: StepSpec, wf: WorkflowSpec) -> StepSpec | None:
    """The successor the one-statement commit can take, or None (use the general commit)."""
    if (connection.vendor != "postgresql" or row.type != "task" or row.parent_id is not None
            or row.item_index is not None or row.run.status != RunStatus.RUNNING or row.concurrency_key):
        return None  # (a step holding a concurrency slot frees it in the general commit)
    if not connection.get_autocommit() or connection.in_atomic_block:
        return None  # inside someone's transaction: the general path keeps its semantics
    if spec.next == END:
        return None
    target = wf.by_name.get(spec.next) if spec.next is not None else wf.following(spec)
    if (target is None or target.sequence != spec.sequence or not step_types.is_work(target.type)
            or target.name in revisitable(wf) or target.concurrency is not None):
        return None
    return target


@functools.cache
def _fields(model: type[Model]) -> list[Field[Any, Any]]:
    """The columns an INSERT writes: all but a database-generated primary key."""
    return [f for f in model._meta.local_concrete_fields if f is not model._meta.auto_field]


def _insert_sql(model: type[Model], rows: int, first: int, source: str = "done") -> str:
    """``INSERT … SELECT $first, … FROM source [UNION ALL …]``, typed by the model's columns."""
    qn = connection.ops.quote_name
    fields = _fields(model)
    selects = []
    for row in range(rows):
        base = first + row * len(fields)
        selects.append("SELECT " + ", ".join(f"CAST(${base + i} AS {f.db_type(connection)})"
                                             for i, f in enumerate(fields)) + f" FROM {source}")
    return (f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
            + " UNION ALL ".join(selects))


def _execute(db: BaseDatabaseWrapper, statement: str, params: list[Any]) -> tuple[Any, ...] | None:
    """Run one of this module's statements; its first row, or None.

    Django's cursors bind parameters on the client; this one binds them on the server and
    takes the ``$n`` placeholders as they are. Each statement is the same text at every
    call, so it is a server-side prepared statement (parsed and planned once per
    connection: about half of PostgreSQL's time for these statements), unless
    ``STEVORA_DB_PREPARED_STATEMENTS`` is off (the connection's ``prepare_threshold`` is
    then None and psycopg sends it unprepared).
    """
    db.ensure_connection()
    raw = db.connection
    assert raw is not None
    with db.wrap_database_errors, psycopg.RawCursor(raw) as cursor:  # Django's error classes
        cursor.execute(statement, params, prepare=True)
        return cursor.fetchone()


@functools.cache
def _statement() -> str:
    """The commit-and-claim statement's text, with ``$n`` placeholders."""
    qn = connection.ops.quote_name
    step_table, run_table = qn(StepExecution._meta.db_table), qn(Run._meta.db_table)
    first_step = 11
    first_event = first_step + len(_fields(StepExecution))
    return (
        f"WITH run AS (SELECT {qn('status')} FROM {run_table} WHERE {qn('id')} = $1 FOR NO KEY UPDATE), "
        f"done AS (UPDATE {step_table} SET {qn('status')} = $2, {qn('output')} = $3, {qn('input')} = $4, "
        f"{qn('error')} = NULL, {qn('finished_at')} = $5, {qn('lease_owner')} = '', {qn('lease_until')} = NULL "
        f"WHERE {qn('id')} = $6 AND {qn('status')} = $7 AND {qn('lease_owner')} = $8 AND {qn('attempt')} = $9 "
        f"AND EXISTS (SELECT 1 FROM run WHERE {qn('status')} = $10) RETURNING {qn('id')}), "
        f"nxt AS ({_insert_sql(StepExecution, 1, first_step)} RETURNING {qn('id')}), "
        f"history AS ({_insert_sql(RunEvent, 2, first_event)}) "
        f"SELECT {qn('id')} FROM nxt"
    )


def _db() -> BaseDatabaseWrapper:
    """This thread's connection itself: ``django.db.connection`` is a proxy that looks it up
    (through asgiref's context-local storage) at every attribute access, and the fields'
    ``get_db_prep_save`` access it several times per column."""
    return connections[DEFAULT_DB_ALIAS]


@functools.cache
def _attnames(model: type[Model]) -> list[str]:
    """The primary key's attname followed by ``_fields``' (the order ``_row`` returns)."""
    assert model._meta.auto_field is not None
    names = [model._meta.auto_field.attname, *(f.attname for f in _fields(model))]
    # Model.from_db takes a full row in concrete_fields order.
    assert names == [f.attname for f in model._meta.concrete_fields], names
    return names


@functools.cache
def _preps(model: type[Model]) -> list[tuple[Field[Any, Any], bool]]:
    return [(f, isinstance(f, AS_IS)) for f in _fields(model)]


def _values(obj: Model, params: list[Any], db: BaseDatabaseWrapper) -> None:
    for f, as_is in _preps(type(obj)):
        value = f.pre_save(obj, True)  # auto_now and auto_now_add stamp here
        params.append(value if as_is else f.get_db_prep_save(value, db))


_GIVEN, _CONSTANT, _CALL, _STAMP = range(4)


@functools.cache
def _plan(model: type[Model]) -> list[tuple[Field[Any, Any], bool, int, Any]]:
    """How each column of an INSERT gets its value when no model instance is built: given
    by the caller, the field's default (a constant, or called each time), or stamped
    (``auto_now``/``auto_now_add``). The same rules as ``Model.__init__`` and ``pre_save``;
    a field with neither a default nor a stamp must be given."""
    plan = []
    for f, as_is in _preps(model):
        if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            plan.append((f, as_is, _STAMP, None))
        elif f.has_default() and callable(f.default):
            plan.append((f, as_is, _CALL, f.default))
        elif f.has_default():
            plan.append((f, as_is, _CONSTANT, f.default))
        elif f.null:
            plan.append((f, as_is, _CONSTANT, None))
        else:
            plan.append((f, as_is, _GIVEN, None))
    return plan


def _row(model: type[Model], given: dict[str, Any], params: list[Any], db: BaseDatabaseWrapper,
         stamp: datetime) -> list[Any]:
    """An INSERT's values for ``model`` from ``given`` (by attname) and the fields' defaults,
    appended to ``params``, without building a model instance (``Model.__init__`` walks every
    field and its descriptors: most of the Python time of a history row). Returns the
    values as Python has them, in ``_fields`` order."""
    values = []
    for f, as_is, how, default in _plan(model):
        if f.attname in given:
            value = given[f.attname]
        elif how == _STAMP:
            value = stamp
        elif how == _CALL:
            value = default()
        elif how == _CONSTANT:
            value = default
        else:
            raise TypeError(f"{model.__name__}.{f.attname} has no default and was not given")
        values.append(value)
        params.append(value if as_is or value is None else f.get_db_prep_save(value, db))
    return values


def commit_and_claim(row: StepExecution, target: StepSpec, output: Any, rendered: Any, owner: str, t: datetime,
                     lease_seconds: float, completed_data: dict[str, Any]) -> StepExecution | object:
    """Complete ``row`` and insert ``target`` claimed by ``owner``, in one statement.

    Returns the claimed successor, or ``NOT_APPLIED`` when the fence or the run
    status did not match (nothing was written).
    """
    def field(name: str) -> Field[Any, Any]:
        return StepExecution._meta.get_field(name)  # type: ignore[return-value]

    db = _db()
    params: list[Any] = [row.run_id, StepStatus.COMPLETED, field("output").get_db_prep_save(output, db),
                         field("input").get_db_prep_save(rendered, db), field("finished_at").get_db_prep_save(t, db),
                         row.pk, StepStatus.RUNNING, owner, row.attempt, RunStatus.RUNNING]
    stamp = timezone.now()
    successor = _row(StepExecution, {
        "run_id": row.run_id, "key": target.name, "name": target.name, "type": target.type, "parent_id": None,
        "branch": row.branch, "item_index": None, "visit": 1, "max_attempts": target.retry.max_attempts,
        "ready_at": t, "state": {}, "status": StepStatus.RUNNING, "lease_owner": owner,
        "lease_until": t + timedelta(seconds=lease_seconds), "attempt": 1, "started_at": t, "dispatched_at": t,
        "priority": row.priority,
    }, params, db, stamp)
    _row(RunEvent, {"run_id": row.run_id, "kind": "step_completed", "step_key": row.key, "data": completed_data},
         params, db, stamp)
    _row(RunEvent, {"run_id": row.run_id, "kind": "step_ready", "step_key": target.name,
                    "data": {"type": target.type}}, params, db, stamp)
    got = _execute(db, _statement(), params)
    if got is None:
        return NOT_APPLIED
    # The instance as a query would load it (positional: cheaper than keyword arguments).
    nxt: StepExecution = StepExecution.from_db(db.alias, _attnames(StepExecution), [got[0], *successor])
    row.status, row.output, row.finished_at = StepStatus.COMPLETED, output, t
    nxt.run = row.run
    return nxt


def finishes(row: StepExecution, spec: StepSpec, wf: WorkflowSpec) -> bool:
    """True when ``row`` is the last step of a top-level run whose output is its output
    (no ``output`` template, no parent run to notify): the one-statement finish applies."""
    if (connection.vendor != "postgresql" or row.type != "task" or row.parent_id is not None
            or row.item_index is not None or row.run.status != RunStatus.RUNNING
            or row.run.parent_step_id is not None or wf.has_output or row.concurrency_key
            or row.run.concurrency_key):
        return False  # (a run or step holding a concurrency slot frees it in the general commit)
    if not connection.get_autocommit() or connection.in_atomic_block:
        return False
    return spec.next == END or (spec.next is None and wf.following(spec) is None)


@functools.cache
def _finish_statement() -> str:
    """Complete the last step and the run (``engine.finish_run``'s UPDATE), with both history rows."""
    qn = connection.ops.quote_name
    step_table, run_table = qn(StepExecution._meta.db_table), qn(Run._meta.db_table)
    return (
        f"WITH run AS (SELECT {qn('status')} FROM {run_table} WHERE {qn('id')} = $1 FOR NO KEY UPDATE), "
        f"done AS (UPDATE {step_table} SET {qn('status')} = $2, {qn('output')} = $3, {qn('input')} = $4, "
        f"{qn('error')} = NULL, {qn('finished_at')} = $5, {qn('lease_owner')} = '', {qn('lease_until')} = NULL "
        f"WHERE {qn('id')} = $6 AND {qn('status')} = $7 AND {qn('lease_owner')} = $8 AND {qn('attempt')} = $9 "
        f"AND EXISTS (SELECT 1 FROM run WHERE {qn('status')} = $10) RETURNING {qn('id')}), "
        f"fin AS (UPDATE {run_table} SET {qn('status')} = $2, {qn('output')} = $11, {qn('error')} = NULL, "
        f"{qn('finished_at')} = $12 WHERE {qn('id')} = $1 AND EXISTS (SELECT 1 FROM done) RETURNING {qn('id')}), "
        f"history AS ({_insert_sql(RunEvent, 2, 13)}) "
        f"SELECT {qn('id')} FROM fin"
    )


def commit_and_finish(row: StepExecution, output: Any, rendered: Any, owner: str, t: datetime,
                      completed_data: dict[str, Any]) -> bool:
    """Complete ``row`` and its run in one statement; False (nothing written) if the fence
    or the run status did not match. The caller sends ``run_status_changed`` after this."""
    def field(model: type[Model], name: str) -> Field[Any, Any]:
        return model._meta.get_field(name)  # type: ignore[return-value]

    db = _db()
    params: list[Any] = [row.run_id, StepStatus.COMPLETED, field(StepExecution, "output").get_db_prep_save(output, db),
                         field(StepExecution, "input").get_db_prep_save(rendered, db),
                         field(StepExecution, "finished_at").get_db_prep_save(t, db),
                         row.pk, StepStatus.RUNNING, owner, row.attempt, RunStatus.RUNNING,
                         field(Run, "output").get_db_prep_save(output, db),
                         field(Run, "finished_at").get_db_prep_save(t, db)]
    stamp = timezone.now()
    _row(RunEvent, {"run_id": row.run_id, "kind": "step_completed", "step_key": row.key, "data": completed_data},
         params, db, stamp)
    _row(RunEvent, {"run_id": row.run_id, "kind": f"run_{RunStatus.COMPLETED}", "data": {}}, params, db, stamp)
    if _execute(db, _finish_statement(), params) is None:
        return False
    row.status, row.output, row.finished_at = StepStatus.COMPLETED, output, t
    row.run.status, row.run.output, row.run.error = RunStatus.COMPLETED, output, None
    return True


@functools.cache
def _start_statement() -> str:
    """A new run, its first step (ready) and both history rows: ``services.start_run``'s writes."""
    qn = connection.ops.quote_name
    run_fields = _fields(Run)
    first_step = 1 + len(run_fields)
    first_event = first_step + len(_fields(StepExecution))
    return (
        f"WITH r AS ({_insert_sql(Run, 1, 1, source='(SELECT) AS one')} RETURNING {qn('id')}), "
        f"s AS ({_insert_sql(StepExecution, 1, first_step, source='r')} RETURNING {qn('id')}), "
        f"h AS ({_insert_sql(RunEvent, 2, first_event, source='r')}) "
        f"SELECT {qn('id')} FROM s"
    )


def start(run: Run, first: StepExecution, started: RunEvent, ready: RunEvent) -> None:
    """Insert ``run`` with its first step and history rows, committed (one statement, in
    autocommit: the caller checked ``available()``); sets ``first.pk``."""
    db = _db()
    params: list[Any] = []
    for obj in (run, first, started, ready):
        _values(obj, params, db)
    got = _execute(db, _start_statement(), params)
    assert got is not None  # plain inserts: a row, or an exception
    for obj in (run, first):
        obj._state.adding = False
        obj._state.db = db.alias
    first.pk = got[0]


def available() -> bool:
    """True when the one-statement paths apply: PostgreSQL, outside any transaction."""
    return connection.vendor == "postgresql" and connection.get_autocommit() and not connection.in_atomic_block


def _columns(alias: str, model: type[Model], fields: list[Field[Any, Any]]) -> str:
    qn = connection.ops.quote_name
    return ", ".join(f"{alias}.{qn(f.column)}" for f in fields)


# Workflow.definition is left deferred: the parsed spec is cached per version (spec_for).
_WORKFLOW_FIELDS = ("id", "workspace", "name", "version", "content_hash", "created_at")


@functools.cache
def _selected_fields() -> tuple[list[Field[Any, Any]], list[Field[Any, Any]], list[Field[Any, Any]]]:
    """The columns the claim, lock and workflow statements select: step, run, workflow."""
    workflow = [Workflow._meta.get_field(name) for name in _WORKFLOW_FIELDS]
    return (list(StepExecution._meta.concrete_fields), list(Run._meta.concrete_fields),
            workflow)  # type: ignore[return-value]


@functools.cache
def _claim_statement() -> str:
    """DESIGN §4 step 2 (the same conditional UPDATE as ``executor.claim``) returning the
    claimed row with its run and workflow: one round trip instead of UPDATE + SELECT.
    Every time in it is the database's (``statement_timestamp()``), never the worker's."""
    qn = connection.ops.quote_name
    steps, runs, workflows = _selected_fields()
    return (
        f"WITH c AS (UPDATE {qn(StepExecution._meta.db_table)} SET "
        f"{qn('recovery_count')} = CASE WHEN {qn('status')} = $2 THEN {qn('recovery_count')} + 1 "
        f"ELSE {qn('recovery_count')} END, {qn('status')} = $2, {qn('lease_owner')} = $3, "
        f"{qn('lease_until')} = statement_timestamp() + make_interval(secs => $4), "
        f"{qn('attempt')} = {qn('attempt')} + 1, {qn('started_at')} = statement_timestamp() "
        f"WHERE {qn('id')} = $1 AND (({qn('status')} = $5 AND ({qn('not_before')} IS NULL "
        f"OR {qn('not_before')} <= statement_timestamp())) "
        f"OR ({qn('status')} = $2 AND {qn('lease_until')} < statement_timestamp())) RETURNING *) "
        f"SELECT {_columns('c', StepExecution, steps)}, {_columns('r', Run, runs)}, "
        f"{_columns('w', Workflow, workflows)} FROM c "
        f"JOIN {qn(Run._meta.db_table)} r ON r.{qn('id')} = c.{qn('run_id')} "
        f"JOIN {qn(Workflow._meta.db_table)} w ON w.{qn('id')} = r.{qn('workflow_id')}"
    )


def _hydrate(db: BaseDatabaseWrapper, model: type[Model], fields: list[Field[Any, Any]], values: Any) -> Any:
    converted = []
    for f, value in zip(fields, values, strict=True):
        from_db = getattr(f, "from_db_value", None)
        converted.append(from_db(value, None, db) if from_db is not None and value is not None else value)
    return model.from_db(db.alias, [f.attname for f in fields], converted)


def _run_and_workflow(db: BaseDatabaseWrapper, values: Any) -> Run:
    """A run with its workflow, from the run's columns followed by the workflow's."""
    _, runs, workflows = _selected_fields()
    run: Run = _hydrate(db, Run, runs, values[:len(runs)])
    run.workflow = _hydrate(db, Workflow, workflows, values[len(runs):])
    return run


@functools.cache
def _lock_statement() -> str:
    """``transitions.lock_run``: the run row locked (FOR NO KEY UPDATE), with its workflow."""
    qn = connection.ops.quote_name
    _, runs, workflows = _selected_fields()
    return (f"SELECT {_columns('r', Run, runs)}, {_columns('w', Workflow, workflows)} "
            f"FROM {qn(Run._meta.db_table)} r JOIN {qn(Workflow._meta.db_table)} w "
            f"ON w.{qn('id')} = r.{qn('workflow_id')} WHERE r.{qn('id')} = $1 FOR NO KEY UPDATE OF r")


def lock_run(run_id: Any) -> Run | None:
    """Lock the run inside the caller's transaction and return it (None: no such run)."""
    db = _db()
    got = _execute(db, _lock_statement(), [run_id])
    return None if got is None else _run_and_workflow(db, got)


@functools.cache
def _workflow_statement(by_version: bool, default_workspace: bool) -> str:
    """``services.resolve_workflow``'s query: the latest (or the given) version of a name."""
    qn = connection.ops.quote_name
    _, _, workflows = _selected_fields()
    where = (f"w.{qn('workspace_id')} = (SELECT {qn('id')} FROM {qn(Workspace._meta.db_table)} "
             f"WHERE {qn('slug')} = $1)") if default_workspace else f"w.{qn('workspace_id')} = $1"
    return (f"SELECT {_columns('w', Workflow, workflows)} FROM {qn(Workflow._meta.db_table)} w "
            f"WHERE {where} AND w.{qn('name')} = $2 "
            + (f"AND w.{qn('version')} = $3" if by_version else f"ORDER BY w.{qn('version')} DESC LIMIT 1"))


def workflow(name: str, workspace_id: int | None, version: int | None) -> Workflow | None:
    """The workflow ``name`` (latest version unless ``version``) in the workspace (None: the
    default one), its definition left deferred (``spec_for`` caches the parsed spec)."""
    params: list[Any] = [DEFAULT_WORKSPACE_SLUG if workspace_id is None else workspace_id, name]
    if version:
        params.append(version)
    db = _db()
    got = _execute(db, _workflow_statement(bool(version), workspace_id is None), params)
    if got is None:
        return None
    _, _, workflows = _selected_fields()
    return _hydrate(db, Workflow, workflows, got)


def claim(step_id: int, owner: str, lease_seconds: float) -> StepExecution | None:
    """Claim ``step_id`` for ``owner`` (None: a duplicate or stale doorbell), in one statement."""
    params = [step_id, StepStatus.RUNNING, owner, float(lease_seconds), StepStatus.READY]
    db = _db()
    got = _execute(db, _claim_statement(), params)
    if got is None:
        return None
    steps, _, _ = _selected_fields()
    row: StepExecution = _hydrate(db, StepExecution, steps, got[:len(steps)])
    row.run = _run_and_workflow(db, got[len(steps):])
    assert row.started_at is not None
    clock.observe(row.started_at)  # the database's time, free with the claim
    return row


NOT_APPLIED = _NOT_APPLICABLE
