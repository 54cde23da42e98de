"""Flow control: ``concurrency`` (per workflow and per step) and ``priority`` (runs.engine.flow).

The limits are checked from the rows the engine recorded: each run's span (its steps'
first ``started_at`` to last ``finished_at``) and each step's, overlapped per key.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import transaction

from runs.definitions import DefinitionError, validate
from runs.engine import recovery
from runs.errors import StartError
from runs.models import Run, RunEvent, RunStatus
from runs.services import start_run
from steps.models import StepExecution, StepStatus
from tests.conftest import EMBEDDED, queue_length
from tests.support.workers import wait_until


def max_overlap(spans: list[tuple[Any, Any]]) -> int:
    """The most spans open at one instant (an end at the same instant as a start comes first)."""
    points = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans],
                    key=lambda p: (p[0], p[1]))
    open_now = best = 0
    for _, delta in points:
        open_now += delta
        best = max(best, open_now)
    return best


def wait_all(run_ids: list[Any], timeout: float = 60.0) -> None:
    def done() -> bool:
        return not Run.objects.filter(pk__in=run_ids).exclude(
            status__in=(RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)).exists()

    wait_until(done, timeout=timeout, interval=0.2, message="every run to finish")
    assert set(Run.objects.filter(pk__in=run_ids).values_list("status", flat=True)) == {RunStatus.COMPLETED}


# --- validation ----------------------------------------------------------------------------


def _doc(**extra: Any) -> dict[str, Any]:
    step = {"name": "s", "type": "task", "handler": "test.value", **extra.pop("step", {})}
    return {"name": "flow-check", "steps": [step], **extra}


@pytest.mark.parametrize(("document", "path", "words"), [
    (_doc(concurrency={"limit": 0}), "concurrency.limit", "minimum"),
    (_doc(concurrency={"limit": "2"}), "concurrency.limit", "integer"),
    (_doc(concurrency={"limit": 1.5}), "concurrency.limit", "integer"),
    (_doc(concurrency={"key": "{{ input.k }}"}), "concurrency", "'limit' is a required property"),
    (_doc(concurrency={"limit": 2, "per": "x"}), "concurrency", "unknown field"),
    (_doc(concurrency={"limit": 2, "key": "{{ input.k "}), "concurrency.key", ""),
    (_doc(concurrency={"limit": 2, "key": "{{ steps.s.output }}"}), "concurrency.key", "before any step"),
    (_doc(step={"concurrency": {"limit": -1}}), "steps[0].concurrency.limit", "minimum"),
    (_doc(step={"concurrency": {"limit": 1, "keys": "x"}}), "steps[0].concurrency", "unknown field"),
    (_doc(priority="high"), "priority", "integer"),
    (_doc(priority=101), "priority", "maximum"),
    (_doc(priority=True), "priority", "integer"),
])
def test_bad_flow_control_is_refused_naming_the_field(document: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(DefinitionError) as info:
        validate(document)
    assert any(p == path and words in m for p, m in info.value.errors), info.value.errors


def test_concurrency_on_a_step_that_holds_no_worker_is_refused() -> None:
    with pytest.raises(DefinitionError) as info:
        validate({"name": "x", "steps": [{"name": "w", "type": "wait", "seconds": 1, "concurrency": {"limit": 1}}]})
    assert any(p == "steps[0]" and "concurrency" in m for p, m in info.value.errors), info.value.errors


def test_a_good_definition_keeps_its_flow_control() -> None:
    spec = validate(_doc(priority=-5, concurrency={"limit": 3, "key": "{{ input.k }}"},
                         step={"concurrency": {"limit": 2}}))
    assert spec.priority == -5
    assert spec.concurrency is not None and (spec.concurrency.limit, spec.concurrency.key) == (3, "{{ input.k }}")
    step = spec.steps[0].concurrency
    assert step is not None and (step.limit, step.key) == (2, None)


def test_a_bad_start_priority_is_refused(db: Any, workflow: Any) -> None:
    workflow(_doc())
    with pytest.raises(StartError) as info:
        start_run("flow-check", {}, priority=1000)
    assert info.value.errors[0][0] == "priority"


# --- the engine --------------------------------------------------------------------------------


def test_a_workflow_key_never_has_more_than_its_limit_active(engine: Any, workflow: Any) -> None:
    # A timer between two tasks: a run holds its slot while it holds no worker, so two
    # workers could run far more than 2 per key at once if admission did not hold them back.
    workflow({"name": "flow-runs", "concurrency": {"limit": 2, "key": "{{ input.customer }}"}, "steps": [
        {"name": "pause", "type": "wait", "seconds": 0.01},
        {"name": "a", "type": "task", "handler": "test.value"},
    ]})
    # Started in one transaction, so that they all meet admission before any can finish (one by
    # one, a fast engine may end each run before the next of its key arrives: nothing queues).
    with transaction.atomic():
        ids = [start_run("flow-runs", {"customer": f"c{i % 2}"}).run.pk for i in range(200)]
    wait_all(ids, timeout=90)
    spans: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
    first: dict[Any, Any] = {}
    last: dict[Any, Any] = {}
    for run_id, started, finished in StepExecution.objects.filter(run_id__in=ids).values_list(
            "run_id", "started_at", "finished_at"):
        assert started is not None and finished is not None
        first[run_id] = min(first.get(run_id, started), started)
        last[run_id] = max(last.get(run_id, finished), finished)
    customers = dict(Run.objects.filter(pk__in=ids).values_list("id", "input__customer"))
    for run_id in ids:
        spans[customers[run_id]].append((first[run_id], last[run_id]))
    assert sorted(spans) == ["c0", "c1"]
    # At most 2 per key, and 2 indeed: the first two of each key were admitted together.
    assert {key: max_overlap(s) for key, s in spans.items()} == {"c0": 2, "c1": 2}
    queued = RunEvent.objects.filter(run_id__in=ids, kind="run_queued")
    assert queued.exists() and "concurrency slot" in queued.first().message  # type: ignore[union-attr]
    # Every queued run was admitted once, as a run_started saying so.
    assert RunEvent.objects.filter(run_id__in=ids, kind="run_started", data__admitted=True).count() == queued.count()


def test_a_step_key_never_has_more_than_its_limit_running(engine: Any, workflow: Any) -> None:
    # The timer's wake-ups make many runs' "call" ready at once (a worker that finished
    # "prep" would otherwise run its own run's next steps itself, one run after another).
    workflow({"name": "flow-steps", "steps": [
        {"name": "prep", "type": "task", "handler": "test.value"},
        {"name": "pause", "type": "wait", "seconds": 0.05},
        {"name": "call", "type": "task", "handler": "test.sleep", "config": {"seconds": 0.05},
         "concurrency": {"limit": 1, "key": "{{ input.tenant }}"}},
        {"name": "after", "type": "task", "handler": "test.value"},
    ]})
    ids = [start_run("flow-steps", {"tenant": f"t{i % 2}"}).run.pk for i in range(30)]
    wait_all(ids)
    spans: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
    tenants = dict(Run.objects.filter(pk__in=ids).values_list("id", "input__tenant"))
    for run_id, started, finished in StepExecution.objects.filter(run_id__in=ids, name="call").values_list(
            "run_id", "started_at", "finished_at"):
        spans[tenants[run_id]].append((started, finished))
    assert {key: max_overlap(s) for key, s in spans.items()} == {"t0": 1, "t1": 1}
    assert RunEvent.objects.filter(run_id__in=ids, kind="step_queued").exists()
    assert RunEvent.objects.filter(run_id__in=ids, kind="step_admitted").exists()


def test_queued_runs_hold_nothing_and_are_admitted_by_priority(engine: Any, workflow: Any, ledger: Path,
                                                                tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    workflow({"name": "flow-prio", "concurrency": {"limit": 1}, "steps": [
        {"name": "s", "type": "task", "handler": "test.gate",
         "config": {"ledger": "{{ input.ledger }}", "gate": "{{ input.gate }}"}},
    ]})
    args = {"ledger": str(ledger), "gate": str(gate)}
    holder = start_run("flow-prio", args).run
    wait_until(lambda: StepExecution.objects.filter(run=holder, status=StepStatus.RUNNING).exists(), timeout=20,
               message="the holder's step to run")
    priorities = [0, 5, -3, 10, 5]
    waiting = [start_run("flow-prio", args, priority=p).run for p in priorities]
    assert {r.status for r in waiting} == {RunStatus.QUEUED}
    # Queued: no step row, so no doorbell and no worker; nothing in the broker either.
    assert not StepExecution.objects.filter(run__in=waiting).exists()
    if not EMBEDDED and settings.BROKER_SCHEME.startswith("redis"):
        import redis

        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        assert queue_length(client, settings.CELERY_TASK_DEFAULT_QUEUE) == 0
    assert [e.kind for e in RunEvent.objects.filter(run=waiting[0])] == ["run_queued"]
    gate.touch()
    wait_all([holder.pk, *(r.pk for r in waiting)])
    order = list(Run.objects.filter(pk__in=[r.pk for r in waiting]).order_by("started_at")
                 .values_list("id", flat=True))
    expected = [waiting[i].pk for i in (3, 1, 4, 0, 2)]  # 10, 5 (first), 5 (second), 0, -3
    assert order == expected
    admitted = RunEvent.objects.filter(run=waiting[3], kind="run_started").get()
    assert admitted.data["admitted"] is True


def test_the_sweep_admits_what_a_crash_left_queued(fresh_engine: Any, workflow: Any) -> None:
    # No engine (fresh_engine stops the shared one; none is started): the holder ends by a
    # bare UPDATE (as if it ended without admitting); the sweep derives the admission.
    workflow({"name": "flow-sweep", "concurrency": {"limit": 1, "key": "{{ input.k }}"},
              "steps": [{"name": "s", "type": "task", "handler": "test.value"}]})
    holder = start_run("flow-sweep", {"k": "x"}).run
    queued = start_run("flow-sweep", {"k": "x"}).run
    other = start_run("flow-sweep", {"k": "y"}).run
    assert (holder.status, queued.status, other.status) == (RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.RUNNING)
    assert recovery.admit_waiting() == 0  # the slot is taken
    Run.objects.filter(pk=holder.pk).update(status=RunStatus.COMPLETED)
    StepExecution.objects.filter(run=holder).update(status=StepStatus.COMPLETED)
    assert recovery.admit_waiting() == 1
    queued.refresh_from_db()
    assert queued.status == RunStatus.RUNNING and queued.started_at is not None
    assert StepExecution.objects.get(run=queued).status == StepStatus.READY
    assert recovery.admit_waiting() == 0


def test_the_sweep_admits_a_queued_step_whose_holder_ended_without_admitting(fresh_engine: Any,
                                                                             workflow: Any) -> None:
    workflow({"name": "flow-step-sweep", "steps": [
        {"name": "s", "type": "task", "handler": "test.value", "concurrency": {"limit": 1}}]})
    first = start_run("flow-step-sweep", {}).run
    second = start_run("flow-step-sweep", {}).run
    assert StepExecution.objects.get(run=second).status == StepStatus.QUEUED
    StepExecution.objects.filter(run=first).update(status=StepStatus.FAILED)
    assert recovery.admit_waiting() == 1
    assert StepExecution.objects.get(run=second).status == StepStatus.READY


def test_a_crash_after_the_holders_commit_loses_no_admission(fresh_engine: Any, workflow: Any,
                                                              tmp_path: Path) -> None:
    # The holder's commit ends its run and admits the queued one (its first step claimed by
    # the committing worker, or rung after commit); the process dies right after that commit,
    # before anything is published. The admitted run still finishes, from the rows alone.
    once = tmp_path / "fault-fired"
    workflow({"name": "flow-crash", "concurrency": {"limit": 1},
              "steps": [{"name": "s", "type": "task", "handler": "test.value", "config": {"value": 1}}]})
    doomed = fresh_engine(STEVORA_FAULT_POINT="before_effects", STEVORA_FAULT_ONCE_FILE=str(once))
    holder = start_run("flow-crash", {}).run
    queued = start_run("flow-crash", {}).run
    assert queued.status == RunStatus.QUEUED
    wait_until(once.exists, timeout=30, message="the fault point to fire")
    if EMBEDDED:  # the engine itself died: start another
        wait_until(lambda: not doomed.alive(), timeout=10, message="the engine to die")
        fresh_engine()
    wait_all([holder.pk, queued.pk], timeout=45)
    assert StepExecution.objects.get(run=queued).output == 1
    assert RunEvent.objects.filter(run=queued, kind="run_started", data__admitted=True).count() == 1


def test_the_api_takes_a_priority_and_shows_a_queued_run(db: Any) -> None:
    from runs.services import load_workflow
    from tests.api_support import SERVICE_PERMS, client_for, errors_by_field, make_user

    api = client_for(make_user("svc", SERVICE_PERMS))
    load_workflow({"name": "flow-api", "priority": 2, "concurrency": {"limit": 1},
                   "steps": [{"name": "s", "type": "task", "handler": "test.value"}]})
    first = api.post("/api/v1/runs/", {"workflow": "flow-api"}, format="json")
    second = api.post("/api/v1/runs/", {"workflow": "flow-api", "priority": 7}, format="json")
    assert first.status_code == 201 and second.status_code == 201, second.json()
    assert (first.json()["status"], first.json()["priority"]) == ("running", 2)
    assert (second.json()["status"], second.json()["priority"]) == ("queued", 7)
    assert second.json()["steps"] == []
    assert "priority" in errors_by_field(api.post("/api/v1/runs/", {"workflow": "flow-api", "priority": 101},
                                                  format="json"))
    assert "priority" in errors_by_field(api.post("/api/v1/runs/", {"workflow": "flow-api", "priority": "high"},
                                                  format="json"))
    cancelled = api.post(f"/api/v1/runs/{second.json()['id']}/cancel/", {}, format="json")
    assert cancelled.status_code == 200, cancelled.json()
    assert Run.objects.get(pk=second.json()["id"]).status == RunStatus.CANCELLED


def test_queued_steps_are_admitted_by_priority(engine: Any, workflow: Any, ledger: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    workflow({"name": "flow-step-prio", "steps": [
        {"name": "s", "type": "task", "handler": "test.gate", "concurrency": {"limit": 1},
         "config": {"ledger": "{{ input.ledger }}", "gate": "{{ input.gate }}"}},
    ]})
    args = {"ledger": str(ledger), "gate": str(gate)}
    holder = start_run("flow-step-prio", args).run
    wait_until(lambda: StepExecution.objects.filter(run=holder, status=StepStatus.RUNNING).exists(), timeout=20,
               message="the holder's step to run")
    waiting = [start_run("flow-step-prio", args, priority=p).run for p in (-1, 3, 0, 3)]
    assert set(StepExecution.objects.filter(run__in=waiting).values_list("status", flat=True)) == {StepStatus.QUEUED}
    assert {r.status for r in waiting} == {RunStatus.RUNNING}  # a run whose step waits is running, honestly
    gate.touch()
    wait_all([holder.pk, *(r.pk for r in waiting)])
    order = list(StepExecution.objects.filter(run__in=waiting).order_by("started_at").values_list("run_id", flat=True))
    assert order == [waiting[i].pk for i in (1, 3, 2, 0)]


def test_map_items_with_a_step_key_respect_it(engine: Any, workflow: Any) -> None:
    # Items started at once and items promoted from max_concurrency's pending rows both queue
    # on the item step's key.
    workflow({"name": "flow-map", "steps": [
        {"name": "each", "type": "map", "over": "{{ input.items }}", "max_concurrency": 3,
         "step": {"type": "task", "handler": "test.sleep", "config": {"seconds": 0.05},
                  "concurrency": {"limit": 1, "key": "{{ item % 2 }}"}}},
    ]})
    ids = [start_run("flow-map", {"items": list(range(8))}).run.pk for _ in range(2)]
    wait_all(ids)
    spans: dict[int, list[tuple[Any, Any]]] = defaultdict(list)
    for index, started, finished in StepExecution.objects.filter(run_id__in=ids, name="each[]").values_list(
            "item_index", "started_at", "finished_at"):
        assert index is not None
        spans[index % 2].append((started, finished))
    assert {key: max_overlap(s) for key, s in spans.items()} == {0: 1, 1: 1}
    assert sum(len(s) for s in spans.values()) == 16


def test_the_admin_shows_a_queued_run_and_offers_to_cancel_it(db: Any, client: Any) -> None:
    from django.contrib.auth.models import User

    from runs.services import load_workflow

    load_workflow({"name": "flow-admin", "concurrency": {"limit": 1},
                   "steps": [{"name": "s", "type": "task", "handler": "test.value"}]})
    start_run("flow-admin", {})
    queued = start_run("flow-admin", {}).run
    assert queued.status == RunStatus.QUEUED
    client.force_login(User.objects.create_superuser("root", password="root-pass-123"))
    page = client.get(f"/admin/runs/run/{queued.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "queued" in text and "waiting for a concurrency slot" in text and "Cancel" in text
    listing = client.get("/admin/runs/run/", {"status__exact": "queued"})
    assert listing.status_code == 200 and str(queued.pk) in listing.content.decode()
