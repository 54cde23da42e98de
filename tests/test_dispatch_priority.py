"""A doorbell the reconciler rings again (a recovered step, a lost message) goes ahead of
the queue (issue 9, defect 7; ``runs.engine.dispatch.URGENT``).

Found in the chaos run: a step recovered from a killed worker waited seconds behind the
backlog of fresh steps, because every ordinary doorbell was published without a priority,
which Redis files in its priority-0 list: the urgent one. Here eight runs' doorbells wait
in the queue with no worker; the last run's step is rung again as urgent; the one worker
then started takes it among its first two (it has two pool processes, prefetch one each).
Brokers with priorities only: the embedded in-memory broker has none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from runs.engine.dispatch import dispatch_steps
from runs.services import start_run
from steps.models import StepExecution
from tests.conftest import read_ledger, wait_for_run

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(settings.IS_EMBEDDED_BROKER, reason="the in-memory broker has no priorities"),
]


def test_an_urgent_doorbell_is_served_before_the_backlog(fresh_engine: Any, workflow: Any, ledger: Path) -> None:
    workflow({"name": "prio", "steps": [
        {"name": "only", "type": "task", "handler": "test.ledger", "config": {"ledger": "{{ input.ledger }}"}}]})
    # fresh_engine: no engine runs yet, so the doorbells of these starts wait in the queue.
    runs = [start_run("prio", {"ledger": str(ledger)}).run for _ in range(8)]
    late = runs[-1]
    dispatch_steps([StepExecution.objects.get(run=late).pk], urgent=True)

    fresh_engine()
    for run in runs:
        assert wait_for_run(run.pk).status == "completed"
    order = [line.split()[0] for line in read_ledger(ledger)]
    assert len(order) == 8
    assert str(late.pk) in order[:2], f"the urgent step ran {order.index(str(late.pk)) + 1}th of 8"


def test_a_delayed_doorbell_keeps_its_runs_priority(fresh_engine: Any, workflow: Any, ledger: Path) -> None:
    # A retry's backoff and a step handed back until a provider's window opens ring with a
    # countdown: the message waits in the queue like any other, so it must carry its run's
    # priority too, or a high-priority run's retry waits behind the whole backlog.
    workflow({"name": "prio-later", "steps": [
        {"name": "only", "type": "task", "handler": "test.ledger", "config": {"ledger": "{{ input.ledger }}"}}]})
    runs = [start_run("prio-later", {"ledger": str(ledger)}).run for _ in range(9)]
    late = StepExecution.objects.get(run=runs[-1])
    dispatch_steps([], [(late.pk, 0.2)], priorities={late.pk: 100})

    fresh_engine()
    for run in runs:
        assert wait_for_run(run.pk).status == "completed"
    order = [line.split()[0] for line in read_ledger(ledger)]
    assert len(order) == 9
    place = order.index(str(runs[-1].pk)) + 1
    assert place <= 2, f"the delayed high-priority step ran {place}th of 9"
