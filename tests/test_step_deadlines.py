"""A step's deadline holds whatever its handler does (issue 9, defects 3 and 6).

A handler that swallows every exception in a loop is told to stop at its timeout,
then abandoned: the attempt ends as timed out (and is retried per its policy) within
timeout + grace, its late result is fenced out, and the engine runs other work
meanwhile — on the embedded engine's single worker too. ``STEVORA_MAX_STEP_SECONDS``
bounds each step, not the chain of successors one task runs back to back."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from runs.models import RunEvent
from runs.services import start_run
from steps.models import StepExecution
from tests.conftest import read_ledger, wait_for_run
from tests.support.workers import wait_until


def test_a_handler_that_ignores_its_timeout_is_abandoned_and_the_engine_runs_on(
        engine: Any, workflow: Any, ledger: Path) -> None:
    workflow({"name": "stubborn", "steps": [{
        "name": "mule", "type": "task", "handler": "test.stubborn", "timeout_seconds": 1,
        "retry": {"max_attempts": 2, "backoff_seconds": 0.1},
        "config": {"seconds": 12, "ledger": str(ledger)}}]})
    workflow({"name": "quick", "steps": [{"name": "hop", "type": "task", "handler": "noop"}]})
    stubborn = start_run("stubborn", {}).run
    quick = start_run("quick", {}).run

    # Both attempts time out (1 s + 1 s grace each) long before the handler would stop by
    # itself (12 s each): caught timeouts used to let it run on.
    stubborn = wait_for_run(stubborn.pk, timeout=9)
    assert stubborn.status == "failed"
    assert stubborn.error is not None and stubborn.error["type"] == "StepTimeout"
    mule = StepExecution.objects.get(run=stubborn, key="mule")
    assert mule.attempt == 2 and mule.failures == 2
    [retry] = RunEvent.objects.filter(run=stubborn, kind="step_retry_scheduled")
    assert retry.data["error"]["type"] == "StepTimeout"
    # Meanwhile the engine ran other work (the embedded engine has one worker).
    assert wait_for_run(quick.pk, timeout=5).status == "completed"

    # The abandoned handlers finish in the end; their results are fenced out.
    wait_until(lambda: len(read_ledger(ledger)) == 2, timeout=30, message="the abandoned handlers to finish")
    mule.refresh_from_db()
    assert mule.status == "failed" and mule.output is None
    assert not RunEvent.objects.filter(run=stubborn, kind="step_completed").exists()


def test_the_step_time_limit_bounds_each_step_not_the_chain_a_task_runs(
        fresh_engine: Any, workflow: Any, ledger: Path) -> None:
    steps = [{"name": f"s{i}", "type": "task", "handler": "test.ledger",
              "config": {"sleep": 0.8, "ledger": str(ledger)}} for i in range(5)]
    workflow({"name": "long-chain", "steps": steps})
    # Each step takes 0.8 s, well within a 2 s limit; the five together do not.
    fresh_engine(STEVORA_MAX_STEP_SECONDS="2", STEVORA_LEASE_SECONDS="2")
    run = wait_for_run(start_run("long-chain", {}).run.pk, timeout=60)
    assert run.status == "completed", run.error
    assert Counter(line.split()[1] for line in read_ledger(ledger)) == {f"s{i}": 1 for i in range(5)}
    assert not RunEvent.objects.filter(run=run, kind="step_recovered").exists()
