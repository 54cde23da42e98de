"""The reconciler: lease recovery, dead-lettering, overlapping sweeps, parked runs."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from runs.engine.executor import process_step
from runs.engine.recovery import sweep
from runs.models import RunEvent
from runs.services import start_run
from steps.models import StepExecution
from tests.conftest import EMBEDDED, queue_length, wait_for_run
from tests.support.workers import wait_until


def _expire(step: StepExecution, recoveries: int = 0) -> None:
    StepExecution.objects.filter(pk=step.pk).update(
        status="running", lease_owner="ghost:1:1", lease_until=timezone.now() - timedelta(seconds=5),
        attempt=step.attempt + 1, recovery_count=recoveries, started_at=timezone.now())


def test_a_step_whose_worker_keeps_dying_is_dead_lettered_with_a_reason(fresh_engine: Any,
                                                                         workflow: Any) -> None:
    # fresh_engine stops the shared engine (and starts none): only this test sweeps.
    workflow({"name": "doomed", "steps": [{"name": "only", "type": "task", "handler": "noop"}]})
    run = start_run("doomed", {}).run
    step = StepExecution.objects.get(run=run, key="only")
    limit = settings.STEVORA["MAX_RECOVERIES"]
    _expire(step, recoveries=limit)
    assert sweep()["recovered"] == 1
    step.refresh_from_db()
    assert step.status == "ready" and step.recovery_count == limit + 1
    process_step(step.pk)
    step.refresh_from_db()
    run.refresh_from_db()
    assert step.status == "failed" and step.error is not None and run.error is not None
    assert step.error["type"] == "dead_lettered"
    assert "STEVORA_MAX_RECOVERIES" in step.error["message"]
    assert run.status == "failed" and run.error["step"] == "only"


def test_two_sweeps_at_once_recover_each_step_once(fresh_engine: Any, workflow: Any) -> None:
    # No engine runs (fresh_engine stopped the shared one): the three sweeps here are all.
    workflow({"name": "swept", "steps": [{"name": "only", "type": "task", "handler": "noop"}]})
    runs = [start_run("swept", {"n": i}).run for i in range(5)]
    for run in runs:
        _expire(StepExecution.objects.get(run=run, key="only"))
    results: list[dict[str, Any]] = []

    def go() -> None:
        try:
            results.append(sweep())
        finally:
            connection.close()

    threads = [threading.Thread(target=go) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.get("recovered", 0) for r in results) == 5
    assert RunEvent.objects.filter(kind="step_recovered").count() == 5
    assert set(StepExecution.objects.values_list("recovery_count", flat=True)) == {1}


def test_a_ready_step_whose_message_was_lost_is_published_again(engine: Any, workflow: Any) -> None:
    workflow({"name": "lost-bell", "steps": [{"name": "only", "type": "task", "handler": "noop"}]})
    run = start_run("lost-bell", {}).run
    # Pretend the publish never happened: the row is ready, the doorbell long overdue.
    StepExecution.objects.filter(run=run).update(dispatched_at=timezone.now() - timedelta(hours=1))
    assert wait_for_run(run.pk).status == "completed"


def test_a_parked_run_holds_no_worker_and_no_message(engine: Any, workflow: Any) -> None:
    workflow({"name": "parked", "steps": [
        {"name": "nap", "type": "wait", "seconds": 3600},
        {"name": "after", "type": "task", "handler": "noop"},
    ]})
    runs = [start_run("parked", {"n": i}).run for i in range(20)]
    for run in runs:
        wait_for_run(run.pk, statuses=("waiting",))
    assert not StepExecution.objects.filter(run__in=runs, status__in=["ready", "running"]).exists()
    assert StepExecution.objects.filter(run__in=runs, status="waiting", wake_at__isnull=False).count() == 20
    if not EMBEDDED:
        import redis

        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        assert queue_length(client, settings.CELERY_TASK_DEFAULT_QUEUE) == 0
    # Moving the timer into the past wakes them all through the sweep.
    StepExecution.objects.filter(run__in=runs, status="waiting").update(wake_at=timezone.now())
    wait_until(lambda: all(wait_for_run(r.pk).status == "completed" for r in runs), timeout=60)
