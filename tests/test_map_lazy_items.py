"""Map items are made as ``max_concurrency`` admits them (issue 11): starting a map of
thousands of items writes only the first few item rows; each completion makes the next;
the join fires exactly once; a killed worker costs only the items it was running."""

from __future__ import annotations

import json
from collections import Counter
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from runs.engine.executor import process_step
from runs.models import Run, RunEvent
from runs.services import cancel_run, start_run
from steps.models import STEP_OPEN, StepExecution
from tests.conftest import read_ledger, wait_for_run
from tests.support.workers import wait_until


def _items(run: Any) -> Any:
    return StepExecution.objects.filter(run_id=run.pk, parent__isnull=False)


def _drive(run: Any, *, limit: int) -> int:
    """Run every ready item here, one claim at a time; check the invariants after each.
    Returns how many claims it took."""
    claims = 0
    while True:
        ready = list(_items(run).filter(status="ready").order_by("item_index").values_list("pk", flat=True)[:1])
        if not ready:
            return claims
        process_step(ready[0])
        claims += 1
        items = _items(run)
        assert items.filter(status__in=STEP_OPEN).count() <= limit
        parent = StepExecution.objects.get(run_id=run.pk, parent__isnull=True, type="map")
        if parent.status == "waiting":
            # The counters are the rows: made rows exist, finished of them completed.
            assert items.count() == parent.state["made"]
            assert items.filter(status="completed").count() == parent.state["finished"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_engine")  # no engine beside this test: it drives every claim itself
def test_starting_a_map_of_5000_items_makes_only_max_concurrency_item_rows(workflow: Any) -> None:
    workflow({"name": "wide-map", "steps": [
        {"name": "each", "type": "map", "over": "{{ input.items }}", "max_concurrency": 4,
         "step": {"type": "task", "handler": "test.value"}}]})
    run = start_run("wide-map", {"items": list(range(5000))}).run
    parent = StepExecution.objects.get(run=run, key="each")
    assert parent.status == "waiting"
    assert _items(run).count() == 4
    assert sorted(_items(run).values_list("key", "status")) == [(f"each[{i}]", "ready") for i in range(4)]
    assert (parent.state["total"], parent.state["made"], parent.state["finished"]) == (5000, 4, 0)
    assert parent.input == list(range(5000))  # the list, stored once on the map step
    out = StringIO()
    call_command("show_run", str(run.pk), stdout=out)
    assert "0/5000 items done, 4996 not started" in out.getvalue()
    out = StringIO()
    call_command("show_run", str(run.pk), "--json", stdout=out)
    shown = {step["name"]: step for step in json.loads(out.getvalue())["steps"]}
    assert shown["each"]["items"] == {"total": 5000, "made": 4, "finished": 0}
    # Cancelling it closes the items made and makes no more.
    cancel_run(run.pk, actor="test")
    assert _items(run).count() == 4
    assert not StepExecution.objects.filter(run=run, status__in=STEP_OPEN).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_engine")
def test_each_completion_makes_the_next_item_and_the_join_fires_once_with_outputs_in_order(
        workflow: Any) -> None:
    workflow({"name": "lazy-map", "steps": [
        {"name": "each", "type": "map", "over": "{{ input.items }}", "max_concurrency": 3,
         "step": {"type": "task", "handler": "test.value"}},
        {"name": "after", "type": "task", "handler": "test.value"}]})
    items = [f"v{i}" for i in range(25)]
    run = start_run("lazy-map", {"items": items}).run
    _drive(run, limit=3)
    after = StepExecution.objects.get(run=run, key="after")
    while after.status in ("ready", "running"):
        process_step(after.pk)
        after.refresh_from_db()
    run.refresh_from_db()
    assert run.status == "completed", run.error
    parent = StepExecution.objects.get(run=run, key="each")
    assert parent.output == items
    assert (parent.state["made"], parent.state["finished"]) == (25, 25)
    assert list(_items(run).order_by("item_index").values_list("attempt", flat=True)) == [1] * 25
    # The join: one completion of the map step, one start of the step after it.
    assert RunEvent.objects.filter(run=run, kind="step_completed", step_key="each").count() == 1
    assert RunEvent.objects.filter(run=run, kind="step_ready", step_key="after").count() == 1
    assert RunEvent.objects.filter(run=run, kind="step_ready", step_key__startswith="each[").count() == 25


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_engine")
def test_a_failed_item_stops_the_map_and_no_later_item_is_made(workflow: Any) -> None:
    workflow({"name": "lazy-fail", "steps": [
        {"name": "each", "type": "map", "over": "{{ input.items }}", "max_concurrency": 2,
         "step": {"type": "task", "handler": "test.fail_times", "retry": {"max_attempts": 1},
                  "config": {"times": "{{ 1 if item == 'bad' else 0 }}"}}}]})
    run = start_run("lazy-fail", {"items": ["ok", "ok", "ok", "bad"] + ["ok"] * 50}).run
    _drive(run, limit=2)
    run.refresh_from_db()
    assert run.status == "failed" and (run.error or {}).get("step") == "each[3]"
    assert _items(run).count() <= 5  # made up to the failure and its one open sibling, never the rest
    assert not StepExecution.objects.filter(run=run, status__in=STEP_OPEN).exists()


@pytest.mark.django_db(transaction=True)
def test_a_map_run_by_two_worker_processes_joins_exactly_once(engine: Any, workflow: Any, ledger: Path) -> None:
    workflow({"name": "busy-map", "steps": [
        {"name": "each", "type": "map", "over": "{{ input.items }}", "max_concurrency": 6,
         "step": {"type": "task", "handler": "test.ledger", "config": {"ledger": str(ledger), "value": "{{ item }}"}}},
        {"name": "after", "type": "task", "handler": "test.value"}]})
    runs = [start_run("busy-map", {"items": list(range(40))}).run for _ in range(3)]
    for started in runs:
        run = wait_for_run(started.pk, timeout=120)
        assert run.status == "completed", run.error
        parent = StepExecution.objects.get(run=run, key="each")
        assert [o["value"] for o in parent.output or []] == list(range(40))
        assert RunEvent.objects.filter(run=run, kind="step_completed", step_key="each").count() == 1
        assert StepExecution.objects.filter(run=run, key__startswith="after").count() == 1
    done = Counter(tuple(line.split()[:2]) for line in read_ledger(ledger))
    assert len(done) == 3 * 40 and set(done.values()) == {1}


@pytest.mark.parametrize("fault", ["", "after_commit"])
def test_a_worker_killed_mid_map_costs_only_the_items_it_was_running(
        fresh_engine: Any, workflow: Any, ledger: Path, tmp_path: Path, fault: str) -> None:
    started = tmp_path / "started.txt"
    started.touch()
    workflow({"name": "kill-map", "steps": [
        {"name": "each", "type": "map", "over": "{{ input.items }}", "max_concurrency": 3,
         "step": {"type": "task", "handler": "test.ledger",
                  "config": {"ledger": str(ledger), "started": str(started), "sleep": 0.3}}}]})
    env = {"STEVORA_FAULT_POINT": fault, "STEVORA_FAULT_ONCE_FILE": str(tmp_path / "fired")} if fault else {}
    first = fresh_engine(**env)
    run = start_run("kill-map", {"items": list(range(15))}).run
    if fault:
        # The fault kills a pool child right after an item's commit (which claimed the next item).
        wait_until(lambda: (tmp_path / "fired").exists(), timeout=60, message="the fault to fire")
    else:
        wait_until(lambda: len(read_ledger(ledger)) >= 4, timeout=60, message="some items to finish")
    first.kill()
    completed_before = set(_items(run).filter(status="completed").values_list("key", flat=True))
    parent = StepExecution.objects.get(run=run, key="each")
    assert _items(run).count() == parent.state["made"] <= len(completed_before) + 3

    fresh_engine()
    run = wait_for_run(run.pk, timeout=90)
    assert run.status == "completed", run.error
    assert [o["step"] for o in StepExecution.objects.get(run=run, key="each").output or []] == [
        f"each[{i}]" for i in range(15)]
    done = Counter(line.split()[1] for line in read_ledger(ledger))
    assert set(done) == {f"each[{i}]" for i in range(15)}
    # Items completed before the kill never ran again; only the ones running at the kill may have.
    assert all(done[key] == 1 for key in completed_before)
    assert sum(done.values()) - 15 <= 3
    assert Run.objects.get(pk=run.pk).status == "completed"
    assert RunEvent.objects.filter(run=run, kind="step_completed", step_key="each").count() == 1
