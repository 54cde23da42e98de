"""Recovery and timers keep their intervals behind a backlog (issue 9, defect 7).

Beat used to publish the reconciler's sweep into the step queue (``expires=30``): behind
more than 30 s of step messages every sweep was discarded, and recovery stalled for
minutes. Now beat's process runs the sweeps itself. Here 10,000 messages sit in the
queue and no worker consumes it at all: beat alone must still wake a due timer and give
an expired lease back. PostgreSQL + Redis only: embedded, ``runengine`` always ran its
sweeps on a thread of its own."""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import timedelta
from typing import Any

import pytest
from celery import current_app
from django.conf import settings
from django.utils import timezone

from runs.models import RunEvent
from runs.services import start_run
from steps.models import StepExecution
from tests.conftest import EMBEDDED
from tests.support.workers import Proc, subprocess_env, wait_until

pytestmark = pytest.mark.skipif(EMBEDDED, reason="embedded, runengine's sweeps never used the queue")

BACKLOG = 10_000


def test_beat_wakes_timers_and_recovers_leases_with_a_backlog_and_no_worker(fresh_engine: Any, workflow: Any) -> None:
    workflow({"name": "nap-then-work", "steps": [{"name": "nap", "type": "wait", "seconds": 1},
                                                 {"name": "work", "type": "task", "handler": "noop"}]})
    workflow({"name": "stalled", "steps": [{"name": "held", "type": "task", "handler": "noop"}]})
    with current_app.producer_or_acquire() as producer:
        for _ in range(BACKLOG):
            current_app.send_task("steps.run_step", (0,), producer=producer,
                                  queue=settings.CELERY_TASK_DEFAULT_QUEUE)
    napping = start_run("nap-then-work", {}).run
    stalled = start_run("stalled", {}).run
    # A worker that claimed the step and died: running, its lease already expired.
    StepExecution.objects.filter(run=stalled, key="held").update(
        status="running", lease_owner="dead:1:1", attempt=1, lease_until=timezone.now() - timedelta(seconds=5))

    schedule = tempfile.mkstemp(prefix="stevora-beat-")[1]
    os.unlink(schedule)
    beat = Proc([sys.executable, "-m", "celery", "-A", "stevora_project", "beat", "-s", schedule, "-l", "WARNING"],
                subprocess_env(STEVORA_RECONCILE_SECONDS="0.5"), "beat").start()
    try:
        wait_until(lambda: StepExecution.objects.filter(run=napping, key="nap", status="completed").exists(),
                   timeout=20, message="the timer to be woken by beat's sweep")
        assert StepExecution.objects.get(run=napping, key="work").status == "ready"
        wait_until(lambda: StepExecution.objects.filter(run=stalled, key="held", status="ready").exists(),
                   timeout=20, message="the expired lease to be recovered by beat's sweep")
        assert RunEvent.objects.filter(run=stalled, kind="step_recovered").count() == 1
    finally:
        beat.kill()
