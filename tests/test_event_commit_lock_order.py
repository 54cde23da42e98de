"""An event delivery and a step commit on the same run never deadlock (issue 9, defect 4).

The lock order (docs/operations.md): a commit locks its run (``FOR NO KEY UPDATE``), then
— activating an ``external_event`` wait — the per-event-name advisory lock. A delivery
takes the advisory lock, then inserts rows that reference the run (its match, a history
row), whose foreign-key checks take ``FOR KEY SHARE`` on the run row. ``KEY SHARE`` does
not conflict with ``NO KEY UPDATE`` (it did with ``FOR UPDATE``: a deadlock, and when
the worker was the victim a finished step ran again). PostgreSQL only: SQLite has one
writer at a time and no row locks."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection, connections, transaction

from events.matching import _LOCK_CLASS, lock_event_name
from events.services import deliver_event
from runs.engine.executor import process_step
from runs.engine.transitions import lock_run
from runs.models import Run
from runs.services import start_run
from steps.models import StepExecution

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks and advisory locks are PostgreSQL's"),
]

ROUNDS = 50


def _advisory_held_by_another() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND granted "
                       "AND pid <> pg_backend_pid()", [_LOCK_CLASS])
        return bool(cursor.fetchone()[0])


def _in_thread(fn: Any, errors: list[BaseException]) -> threading.Thread:
    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    return thread


def test_a_delivery_holding_the_event_lock_never_deadlocks_with_a_commit_holding_the_run(workflow: Any) -> None:
    workflow({"name": "race-wait", "steps": [
        {"name": "wait", "type": "external_event", "event": "race", "key": "{{ input.key }}"}]})
    for round_ in range(ROUNDS):
        run = start_run("race-wait", {"key": str(round_)}).run
        workspace_id = Run.objects.get(pk=run.pk).workspace_id
        errors: list[BaseException] = []
        has_run_lock = threading.Event()
        delivered = threading.Event()

        def commit(run_id: Any = run.pk) -> None:
            # A step commit's order: the run first, then (activating a wait) the event name.
            with transaction.atomic():
                lock_run(run_id)
                has_run_lock.set()
                deadline = time.monotonic() + 2
                while not _advisory_held_by_another() and not delivered.is_set() and time.monotonic() < deadline:
                    time.sleep(0.002)
                lock_event_name(workspace_id, "race")

        def deliver(key: str = str(round_)) -> None:
            has_run_lock.wait(10)
            deliver_event("race", key=key, payload={"round": key})
            delivered.set()

        threads = [_in_thread(commit, errors), _in_thread(deliver, errors)]
        for thread in threads:
            thread.join(30)
        assert not errors, f"round {round_}: {errors!r}"
        assert StepExecution.objects.get(run=run, key="wait").status == "completed"


def test_real_commits_and_deliveries_racing_on_one_run_all_finish(workflow: Any, fresh_engine: Any) -> None:
    # fresh_engine stops the shared engine (and starts none): the steps are committed here, in the race.
    workflow({"name": "race-both", "steps": [
        {"name": "fan", "type": "parallel", "branches": {
            "w": [{"name": "w1", "type": "external_event", "event": "race2", "key": "{{ input.key }}"}],
            "t": [{"name": "t1", "type": "task", "handler": "noop"},
                  {"name": "t2", "type": "external_event", "event": "race2", "key": "{{ input.key }}-late"}],
        }}]})
    for round_ in range(ROUNDS):
        key = str(round_)
        run = start_run("race-both", {"key": key}).run
        t1 = StepExecution.objects.get(run=run, key="t1")
        errors: list[BaseException] = []
        start = threading.Barrier(2)
        threads = [
            _in_thread(lambda: (start.wait(), process_step(t1.pk)), errors),  # type: ignore[func-returns-value]
            _in_thread(lambda: (start.wait(), deliver_event("race2", key=key)), errors),
        ]
        for thread in threads:
            thread.join(30)
        assert not errors, f"round {round_}: {errors!r}"
        assert StepExecution.objects.get(run=run, key="t1").status == "completed"
        assert StepExecution.objects.get(run=run, key="w1").status == "completed"
        deliver_event("race2", key=f"{key}-late")
        assert Run.objects.get(pk=run.pk).status == "completed"
