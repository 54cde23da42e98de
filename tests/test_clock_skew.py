"""Leases are judged by the database's clock, not a worker's (issue 9, defect 5).

A worker whose clock runs an hour ahead used to take over a live lease when a duplicate
message reached it (and its reconciler "recovered" every running step); one an hour
behind handed out leases that had expired an hour before, so any other reconciler
recovered its step while it ran. Either way a step's side effect happened twice. The
skewed worker runs under libfaketime (``FAKETIME``), a real clock change for that process
only. PostgreSQL + Redis only: embedded, the database (SQLite) runs inside the engine's
own process and so shares its clock by construction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from celery import current_app
from django.conf import settings

from runs.services import start_run
from steps.models import StepExecution
from tests.conftest import EMBEDDED, read_ledger, wait_for_run
from tests.support.workers import wait_until

LIBFAKETIME = next((p for p in ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                                "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1") if os.path.exists(p)), None)

pytestmark = [
    pytest.mark.skipif(EMBEDDED, reason="embedded, the database runs in the engine's process and shares its clock"),
    pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime is not installed (apt-get install libfaketime)"),
]


def _skewed(offset: str) -> dict[str, str]:
    assert LIBFAKETIME is not None
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def test_a_worker_whose_clock_runs_an_hour_ahead_never_runs_a_live_step_twice(
        fresh_engine: Any, workflow: Any, ledger: Path, tmp_path: Path) -> None:
    skew = "+1h"
    started = tmp_path / "started.txt"
    started.touch()
    workflow({"name": "skew", "steps": [{"name": "slow", "type": "task", "handler": "test.ledger",
                                         "config": {"sleep": 6, "started": str(started), "ledger": str(ledger)}}]})
    lease = {"STEVORA_LEASE_SECONDS": "3", "STEVORA_RECONCILE_SECONDS": "0.5"}
    # A correct worker runs the step; the skewed one joins, with beat's sweeps of its own.
    first_env, second_env = lease, {**lease, **_skewed(skew)}
    fresh_engine(**first_env)
    run = start_run("skew", {}).run
    wait_until(lambda: read_ledger(started), timeout=30, message="the step to start")
    fresh_engine(**second_env)
    # A duplicate doorbell for the running step (as a redelivery would ring it).
    step = StepExecution.objects.get(run=run, key="slow")
    current_app.send_task("steps.run_step", (step.pk,), queue=settings.CELERY_TASK_DEFAULT_QUEUE)

    run = wait_for_run(run.pk, timeout=60)
    assert run.status == "completed", run.error
    assert len(read_ledger(started)) == 1, read_ledger(started)
    assert len(read_ledger(ledger)) == 1
    step.refresh_from_db()
    assert step.attempt == 1 and step.recovery_count == 0


@pytest.mark.django_db(transaction=True)
def test_a_process_whose_clock_runs_an_hour_behind_hands_out_leases_by_the_database_clock(
        workflow: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An hour behind, under libfaketime 0.9.10 every sleep fails with EINVAL (a negative
    offset breaks its clock_nanosleep), so this one moves this process's clock by hand:
    Django's ``timezone.now`` an hour back, as the worker's would be."""
    from datetime import timedelta

    from django.utils import timezone

    from runs.engine import executor, recovery
    from runs.engine.heartbeat import Heartbeat
    from steps import clock

    workflow({"name": "behind", "steps": [{"name": "s", "type": "task", "handler": "noop"}]})
    run = start_run("behind", {}).run
    step = StepExecution.objects.get(run=run, key="s")
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() - timedelta(hours=1))
    monkeypatch.setattr(clock, "_state", type(clock._state)())  # forget the offset measured before
    claimed = executor.claim(step.pk)
    assert claimed is not None
    step.refresh_from_db()
    assert step.lease_until is not None and step.lease_until > real_now()
    assert clock.now() > real_now() - timedelta(seconds=5)  # the measured offset undoes the skew
    assert recovery.recover_expired_leases() == 0
    beat = Heartbeat()
    beat.hold(step.pk, claimed.lease_owner, claimed.attempt)
    wait_until(lambda: StepExecution.objects.get(pk=step.pk).lease_until != step.lease_until, timeout=10,
               message="a heartbeat")
    renewed = StepExecution.objects.get(pk=step.pk).lease_until
    assert renewed is not None and renewed > real_now()
    beat.release(step.pk)
