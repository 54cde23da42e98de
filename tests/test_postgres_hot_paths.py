"""PostgreSQL's one-statement hot paths (``runs.engine.hotpath``) write exactly what the
general paths write.

Outside a transaction, on PostgreSQL, ``start_run``, the claim, the commit of a step with
its successor and the commit of a run's last step are single prepared statements. Inside
someone's transaction the same calls take the general, ORM paths. Each test runs one
workflow both ways, in this process with no worker beside it, and compares the rows.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction

from runs.engine.executor import process_step
from runs.models import Run
from runs.services import start_run
from steps.models import StepExecution
from tests.conftest import EMBEDDED

pytestmark = pytest.mark.skipif(EMBEDDED, reason="the one-statement paths are PostgreSQL's")

SEQUENCE = {"name": "hot-seq", "input_schema": {"type": "object", "required": ["n"]},
            "steps": [{"name": f"s{i}", "type": "task", "handler": "echo",
                       "config": {"i": i, "n": "{{ input.n }}"}} for i in range(4)]}

# Values that differ between any two runs: ids, times, the worker's name.
VOLATILE = {"id", "run_id", "parent_id", "created_at", "updated_at", "ready_at", "started_at", "finished_at",
            "dispatched_at", "lease_until", "worker", "duration_ms"}


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<set>" if v is not None else None) if k in VOLATILE else _scrub(v) for k, v in value.items()}
    return value


def snapshot(run_id: Any) -> dict[str, Any]:
    run = Run.objects.get(pk=run_id)
    return {
        "run": _scrub({f.attname: getattr(run, f.attname) for f in Run._meta.concrete_fields}),
        "steps": [_scrub(row) for row in StepExecution.objects.filter(run_id=run_id).order_by("id").values()],
        "history": [_scrub({"kind": e.kind, "step_key": e.step_key, "actor": e.actor, "message": e.message,
                            "data": e.data}) for e in run.history.order_by("id")],
    }


def run_in_process(one_statement: bool) -> Any:
    """Start ``hot-seq`` and run it to the end here; inside a transaction unless ``one_statement``."""
    def go() -> Any:
        run = start_run("hot-seq", {"n": 7}, actor="tester").run
        first = StepExecution.objects.get(run_id=run.pk)
        process_step(first.pk)
        return run.pk

    if one_statement:
        return go()
    with transaction.atomic():
        return go()


def test_a_sequential_run_writes_the_same_rows_either_way(fresh_engine: Any, workflow: Any) -> None:
    # fresh_engine: the shared worker is stopped, so nothing but this process runs steps.
    workflow(SEQUENCE)
    general = snapshot(run_in_process(one_statement=False))
    fast = snapshot(run_in_process(one_statement=True))
    assert general["run"]["status"] == "completed"
    assert general["run"]["output"] == {"i": 3, "n": 7}
    assert [e["kind"] for e in general["history"]] == (
        ["run_started"] + ["step_ready", "step_completed"] * 4 + ["run_completed"])
    assert fast == general


def test_the_hot_statements_are_prepared_on_the_server(fresh_engine: Any, workflow: Any) -> None:
    workflow(SEQUENCE)
    run_in_process(one_statement=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = " ".join(row[0] for row in cursor.fetchall())
    assert 'INSERT INTO "runs_run"' in prepared  # start
    assert 'UPDATE "steps_stepexecution" SET "recovery_count"' in prepared  # claim
    assert 'INSERT INTO "steps_stepexecution"' in prepared  # commit + claim the successor
    assert 'UPDATE "runs_run" SET "status"' in prepared  # commit the last step and the run


def test_a_worker_with_prepared_statements_off_runs_the_same_workflow(fresh_engine: Any, workflow: Any) -> None:
    from tests.conftest import wait_for_run

    workflow(SEQUENCE)
    fresh_engine(STEVORA_DB_PREPARED_STATEMENTS="false")
    run = wait_for_run(start_run("hot-seq", {"n": 1}).run.pk)
    assert run.status == "completed" and run.output == {"i": 3, "n": 1}
