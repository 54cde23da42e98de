"""Once a fan-out step, its run or an ancestor has ended, nothing new starts under it
(issue 9, defect 1): activation stops, a claim of an open child cancels it, and child
runs of closed steps are cancelled. Driven in-process (every step here is inline, or
claimed by ``process_step`` in this test), on both databases."""

from __future__ import annotations

from typing import Any

import pytest

from runs.engine.executor import process_step
from runs.models import Run, RunEvent
from runs.services import start_run
from steps.models import STEP_OPEN, StepExecution
from tests.conftest import read_ledger

# No engine runs beside these tests: they drive every claim themselves.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_engine")]


def test_a_parallel_step_whose_first_branch_fails_inline_starts_no_later_branch(workflow: Any, ledger: Any) -> None:
    workflow({"name": "fan-fail", "steps": [
        {"name": "fan", "type": "parallel", "on_failure": "cleanup", "branches": {
            # Fails while it is activated: its child workflow does not exist.
            "a": [{"name": "a1", "type": "workflow", "workflow": "no-such-workflow"}],
            "b": [{"name": "b1", "type": "task", "handler": "test.ledger", "config": {"ledger": str(ledger)}}],
        }},
        {"name": "after", "type": "task", "handler": "noop", "next": "end"},
        {"name": "cleanup", "type": "task", "handler": "noop"},
    ]})
    run = start_run("fan-fail", {}).run
    keys = set(StepExecution.objects.filter(run=run).values_list("key", flat=True))
    assert "b1" not in keys, "a branch was started under a fan-out that had already failed"
    assert StepExecution.objects.get(run=run, key="fan").status == "failed"
    cleanup = StepExecution.objects.get(run=run, key="cleanup")
    while cleanup.status in ("ready", "running"):
        process_step(cleanup.pk)
        cleanup.refresh_from_db()
    assert Run.objects.get(pk=run.pk).status == "completed"
    assert read_ledger(ledger) == []


def test_a_map_item_that_fails_while_starting_stops_the_items_after_it(workflow: Any) -> None:
    workflow({"name": "child-waits", "steps": [{"name": "nap", "type": "wait", "seconds": "{{ input.n }}"}]})
    workflow({"name": "map-fail", "steps": [
        {"name": "each", "type": "map", "over": "{{ input.items }}",
         "step": {"name": "child", "type": "workflow", "workflow": "child-waits", "input": {"n": "{{ item }}"}}},
    ]})
    # Item 0's child run fails at once (a negative wait); items 1 and 2 would start child runs
    # that wait a minute — after the map, and the run, had failed.
    run = start_run("map-fail", {"items": [-1, 60, 60]}).run
    run.refresh_from_db()
    assert run.status == "failed", run.error
    items = StepExecution.objects.filter(run=run, parent__isnull=False)
    assert sorted(items.values_list("key", flat=True)) == ["each[0]"]
    assert not Run.objects.filter(parent_run=run).exclude(status__in=("failed", "cancelled")).exists()
    assert not StepExecution.objects.filter(run=run, status__in=STEP_OPEN).exists()


def test_a_child_claimed_after_its_fan_out_closed_is_cancelled_not_run(workflow: Any, ledger: Any) -> None:
    workflow({"name": "fan-claim", "steps": [
        {"name": "fan", "type": "parallel", "branches": {
            "a": [{"name": "a1", "type": "task", "handler": "test.permanent"}],
            "b": [{"name": "b1", "type": "task", "handler": "test.ledger", "config": {"ledger": str(ledger)}}],
        }},
    ]})
    run = start_run("fan-claim", {}).run
    b1 = StepExecution.objects.get(run=run, key="b1")
    # The fan-out step closes while b1's doorbell is still in flight (as a worker that
    # committed a1's failure elsewhere would leave it); then b1's message arrives.
    StepExecution.objects.filter(run=run, key="fan").update(status="failed")
    process_step(b1.pk)
    b1.refresh_from_db()
    assert b1.status == "cancelled"
    assert read_ledger(ledger) == []
    assert RunEvent.objects.filter(run=run, kind="step_cancelled", step_key="b1").exists()


def test_a_step_claimed_after_its_run_ended_is_cancelled_not_run(workflow: Any, ledger: Any) -> None:
    workflow({"name": "late-claim", "steps": [
        {"name": "s1", "type": "task", "handler": "test.ledger", "config": {"ledger": str(ledger)}}]})
    run = start_run("late-claim", {}).run
    Run.objects.filter(pk=run.pk).update(status="cancelled")
    s1 = StepExecution.objects.get(run=run, key="s1")
    process_step(s1.pk)
    s1.refresh_from_db()
    assert s1.status == "cancelled" and read_ledger(ledger) == []


def test_cancelling_a_big_map_is_a_few_statements_not_one_per_item(workflow: Any) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from runs.services import cancel_run

    workflow({"name": "big-map", "steps": [
        {"name": "each", "type": "map", "over": "{{ input.items }}", "step": {"name": "x", "type": "task",
                                                                          "handler": "noop"}}]})
    run = start_run("big-map", {"items": list(range(300))}).run
    with CaptureQueriesContext(connection) as queries:
        cancel_run(run.pk, actor="test")
    updates = [q for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("UPDATE")
               and "steps_stepexecution" in q["sql"]]
    assert len(updates) <= 3, [q["sql"][:120] for q in updates]
    assert not StepExecution.objects.filter(run=run, status__in=STEP_OPEN).exists()
