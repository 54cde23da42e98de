"""What a commit promises other runs survives a crash right after it (issue 9, defect 2).

``retry_run`` on a parent whose child run failed, and ``cancel_run`` on a parent with a
live child run, each commit the parent's change and then reach the child. The process
is SIGKILLed at the fault point between the two (``before_effects``); the engine's
reconciler finishes the job from the rows: the parent does not wait forever, the child
does not run on alone."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from runs.models import Run
from runs.services import start_run
from steps.models import StepExecution
from tests.conftest import wait_for_run
from tests.support.workers import ROOT, subprocess_env, wait_until


def _killed_after_commit(command: str, run_id: Any) -> None:
    proc = subprocess.run([sys.executable, "manage.py", command, str(run_id)], cwd=ROOT,
                          env=subprocess_env(STEVORA_FAULT_POINT="before_effects"), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -9, (proc.returncode, proc.stdout, proc.stderr)


def test_retrying_a_parent_whose_child_failed_survives_a_crash_after_its_commit(engine: Any, workflow: Any) -> None:
    workflow({"name": "flaky-child", "steps": [
        {"name": "once", "type": "task", "handler": "test.fail_times", "config": {"times": 1}}]})
    workflow({"name": "flaky-parent", "steps": [{"name": "call", "type": "workflow", "workflow": "flaky-child"}]})
    parent = wait_for_run(start_run("flaky-parent", {}).run.pk)
    assert parent.status == "failed"
    child = Run.objects.get(parent_run=parent)
    assert child.status == "failed"

    _killed_after_commit("retry_run", parent.pk)
    # Committed: the parent's step waits for its child again; the child's retry never happened.
    assert StepExecution.objects.get(run=parent, key="call").status == "waiting"
    parent = wait_for_run(parent.pk, timeout=30)
    assert parent.status == "completed", parent.error
    child.refresh_from_db()
    assert child.status == "completed" and child.output == {"attempt": 2}


def test_cancelling_a_parent_reaches_its_child_after_a_crash_after_its_commit(engine: Any, workflow: Any) -> None:
    workflow({"name": "slow-child", "steps": [{"name": "nap", "type": "wait", "seconds": 600}]})
    workflow({"name": "slow-parent", "steps": [{"name": "call", "type": "workflow", "workflow": "slow-child"}]})
    parent = start_run("slow-parent", {}).run
    child = wait_until(lambda: Run.objects.filter(parent_run=parent).first(), message="the child run")

    _killed_after_commit("cancel_run", parent.pk)
    assert Run.objects.get(pk=parent.pk).status == "cancelled"
    child = wait_for_run(child.pk, timeout=30)
    assert child.status == "cancelled"
    assert StepExecution.objects.get(run=child, key="nap").status == "cancelled"
