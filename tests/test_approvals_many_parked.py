# mypy: disable-error-code="index,type-var"
"""1,000 runs parked on approvals hold no worker slot and no message; approving them all finishes them all.

Embedded, 250: the one solo engine then runs each run's last step in turn, which tells
nothing more about parking and took minutes of the suite (bench/scale.py goes to 100,000).
Times are printed (run with -s), never asserted.
"""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth.models import User

from approvals.models import Approval, ApprovalStatus
from approvals.services import decide
from runs.models import Run, RunStatus
from runs.services import start_run
from tests.approval_support import busy_steps, queued_messages
from tests.conftest import EMBEDDED
from tests.support.workers import wait_until

N = 250 if EMBEDDED else 1000


def test_many_parked_runs_hold_nothing_and_all_finish_once_approved(
        engine: Any, workflow: Any, alice: User) -> None:
    workflow({"name": "parked", "steps": [
        {"name": "ok", "type": "approval", "content": "{{ input.n }}"},
        {"name": "after", "type": "task", "handler": "test.value", "config": {"value": "{{ input.n }}"}},
    ]})
    t0 = time.monotonic()
    run_ids = [start_run("parked", {"n": i}).run.pk for i in range(N)]
    t_start = time.monotonic() - t0

    assert Run.objects.filter(pk__in=run_ids, status=RunStatus.WAITING).count() == N
    assert Approval.objects.filter(run_id__in=run_ids, status=ApprovalStatus.PENDING).count() == N
    # Parked: no step running or ready (no worker slot), no message queued or reserved.
    assert busy_steps(run_ids) == 0
    assert wait_until(lambda: queued_messages() == 0, timeout=60, message="an empty queue")

    t1 = time.monotonic()
    for approval_id in Approval.objects.filter(run_id__in=run_ids).values_list("pk", flat=True):
        decide(approval_id, user=alice, approve=True)
    t_decide = time.monotonic() - t1
    wait_until(lambda: Run.objects.filter(pk__in=run_ids, status=RunStatus.COMPLETED).count() == N,
               timeout=600, interval=0.5, message=f"all {N} runs to complete")
    t_total = time.monotonic() - t1
    assert sorted(Run.objects.filter(pk__in=run_ids).values_list("output", flat=True)) == list(range(N))
    print(f"\n{N} parked runs: started in {t_start:.1f}s ({t_start / N * 1000:.1f} ms/run); "
          f"{N} decisions in {t_decide:.1f}s ({t_decide / N * 1000:.1f} ms each); "
          f"all completed {t_total:.1f}s after the first decision")
