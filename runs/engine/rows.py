"""Many new rows of one model in one INSERT: a batch start's runs, steps and history.

Django's ``bulk_create`` spends most of a 1,000-run batch start preparing values: it
compiles a placeholder per value, calls each field's ``get_db_prep_save`` and then
psycopg quotes every value into the SQL text on the client (Django's cursors bind on the
client). On PostgreSQL this writes the same rows with the values bound on the server:
each value prepared as ``hotpath`` prepares its one-statement rows (a field's
``pre_save`` for defaults and ``auto_now``; ``get_db_prep_save`` only for JSON, decimals
and other fields psycopg cannot take as they are), one ``INSERT … VALUES ($1, …), …
RETURNING id`` per 65,535 parameters. SQLite (embedded) takes ``bulk_create``.

Inside the caller's transaction, on Django's own connection; database errors are
Django's (``IntegrityError`` for a taken idempotency key, as with ``bulk_create``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import (
    BooleanField,
    CharField,
    DateTimeField,
    Field,
    ForeignKey,
    IntegerField,
    Model,
    TextField,
    UUIDField,
)

# Columns whose model value psycopg takes as it is (Django's get_db_prep_save would hand it
# over unchanged on PostgreSQL, after several calls per column). JSON, decimals and any
# other field go through the field's own get_db_prep_save. Also hotpath's.
AS_IS = (CharField, TextField, IntegerField, DateTimeField, UUIDField, BooleanField, ForeignKey)
_MAX_PARAMS = 65_535  # PostgreSQL's limit per statement


@functools.cache
def _plan(model: type[Model]) -> tuple[list[tuple[Field[Any, Any], bool]], str, str]:
    """The columns an INSERT writes (all but a database-generated key), the statement's head,
    and the RETURNING clause ("" when the key is not generated)."""
    db = connections[DEFAULT_DB_ALIAS]
    qn = db.ops.quote_name
    auto = model._meta.auto_field
    fields = [f for f in model._meta.local_concrete_fields if f is not auto]
    head = f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) VALUES "
    returning = f" RETURNING {qn(auto.column)}" if auto is not None else ""
    return [(f, isinstance(f, AS_IS)) for f in fields], head, returning


def insert(model: type[Model], objs: Sequence[Model]) -> None:
    """Insert ``objs`` (new instances of ``model``), setting their generated keys."""
    if not objs:
        return
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor != "postgresql":
        model._default_manager.bulk_create(objs)
        return
    fields, head, returning = _plan(model)
    width = len(fields)
    per_statement = _MAX_PARAMS // width
    db.ensure_connection()
    raw = db.connection
    assert raw is not None
    for start in range(0, len(objs), per_statement):
        part = objs[start:start + per_statement]
        params: list[Any] = []
        for obj in part:
            for f, as_is in fields:
                value = f.pre_save(obj, True)  # auto_now and auto_now_add stamp here
                params.append(value if as_is else f.get_db_prep_save(value, db))
        values = ", ".join("(" + ", ".join(f"${row * width + i + 1}" for i in range(width)) + ")"
                           for row in range(len(part)))
        with db.wrap_database_errors, psycopg.RawCursor(raw) as cursor:
            cursor.execute(head + values + returning, params, prepare=False)
            if returning:
                for obj, (pk,) in zip(part, cursor.fetchall(), strict=True):
                    obj.pk = pk
        for obj in part:
            obj._state.adding = False
            obj._state.db = db.alias


def _field(model: type[Model], name: str) -> Field[Any, Any]:
    return cast("Field[Any, Any]", model._meta.get_field(name))


def update_each(model: type[Model], pk_field: str, guard: dict[str, Any], fixed: dict[str, Any],
                each: dict[str, list[tuple[Any, Any]]]) -> int:
    """One guarded UPDATE giving every row its own values: ``fixed`` columns set alike,
    ``each[column]`` as (pk, value) pairs, for the rows whose ``guard`` columns match; the
    number of rows updated. PostgreSQL: ``UPDATE … FROM (VALUES ($1::type, …), …)``; SQLite
    (and any other): the ORM's ``CASE WHEN pk = … THEN …`` (what ``bulk_update`` writes)."""
    pks = list(dict.fromkeys(pk for pairs in each.values() for pk, _ in pairs))
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor != "postgresql" or not pks:
        return _update_each_orm(model, pk_field, guard, fixed, each, pks)
    qn = db.ops.quote_name
    meta = model._meta
    pk_col = _field(model, pk_field)
    columns = list(each)
    fields = [_field(model, name) for name in columns]
    by_pk = {name: dict(pairs) for name, pairs in each.items()}
    params: list[Any] = []
    rows = []
    for pk in pks:
        marks = [f"${len(params) + 1}::{pk_col.db_type(db)}"]
        params.append(pk)
        for name, f in zip(columns, fields, strict=True):
            value = by_pk[name].get(pk)
            params.append(f.get_db_prep_save(value, db))
            marks.append(f"${len(params)}::{f.db_type(db)}")
        rows.append("(" + ", ".join(marks) + ")")
    sets = [f"{qn(f.column)} = v.{qn(f.column)}" for f in fields]
    for name, value in fixed.items():
        f = _field(model, name)
        params.append(f.get_db_prep_save(value, db))
        sets.append(f"{qn(f.column)} = ${len(params)}::{f.db_type(db)}")
    wheres = [f"t.{qn(pk_col.column)} = v.{qn(pk_col.column)}"]
    for name, value in guard.items():
        f = _field(model, name)
        params.append(value)
        wheres.append(f"t.{qn(f.column)} = ${len(params)}")
    names = ", ".join(qn(f.column) for f in [pk_col, *fields])
    statement = (f"UPDATE {qn(meta.db_table)} AS t SET {', '.join(sets)} FROM (VALUES {', '.join(rows)}) "
                 f"AS v({names}) WHERE {' AND '.join(wheres)}")
    db.ensure_connection()
    raw = db.connection
    assert raw is not None
    with db.wrap_database_errors, psycopg.RawCursor(raw) as cursor:
        cursor.execute(statement, params, prepare=False)
        return int(cursor.rowcount)


def _update_each_orm(model: type[Model], pk_field: str, guard: dict[str, Any], fixed: dict[str, Any],
                     each: dict[str, list[tuple[Any, Any]]], pks: list[Any]) -> int:
    from django.db.models import Case, Value, When

    values: dict[str, Any] = dict(fixed)
    for name, pairs in each.items():
        output = _field(model, name)
        values[name] = Case(*(When(**{pk_field: pk}, then=Value(value, output_field=output))
                              for pk, value in pairs), output_field=output)
    return model._default_manager.filter(**{f"{pk_field}__in": pks}, **guard).update(**values)
