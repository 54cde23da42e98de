"""The worker registry: a dead worker is noticed at once, a missing handler makes a step
wait for a worker that has it, and the CLI says when no engine is there.

Each process that runs steps registers a row and holds a liveness lock (an advisory
lock on its own PostgreSQL connection; a file lock on SQLite) that dies with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.core.management import call_command

import tests.late_handlers  # noqa: F401 - registers test.late in this process only
from runs.models import RunEvent, RunStatus, Worker
from runs.services import start_run
from steps.models import StepExecution
from tests.conftest import EMBEDDED, read_ledger, wait_for_run
from tests.support.workers import ROOT, subprocess_env, wait_until

LONG_LEASE = "60"  # far longer than the test waits: only the registry can recover in time


def _pid_of(owner: str) -> int:
    return int(owner.split(":")[1])


def test_a_killed_workers_step_runs_again_long_before_its_lease_runs_out(
        fresh_engine: Any, workflow: Any, ledger: Path, tmp_path: Path) -> None:
    started = tmp_path / "started.txt"
    started.touch()
    workflow({"name": "reg-kill", "steps": [
        {"name": "a", "type": "task", "handler": "test.ledger", "config": {"ledger": "{{ input.ledger }}"}},
        {"name": "slow", "type": "task", "handler": "test.ledger",
         "config": {"ledger": "{{ input.ledger }}", "started": "{{ input.started }}", "sleep": 4}},
        {"name": "b", "type": "task", "handler": "test.ledger", "config": {"ledger": "{{ input.ledger }}"}},
    ]})
    first = fresh_engine(STEVORA_LEASE_SECONDS=LONG_LEASE)
    run = start_run("reg-kill", {"ledger": str(ledger), "started": str(started)}).run
    wait_until(lambda: " slow " in started.read_text(), timeout=30, message="the slow step to start")
    slow = StepExecution.objects.get(run=run, key="slow")
    assert slow.status == "running"
    claimed_until = slow.lease_until
    assert claimed_until is not None
    pid = _pid_of(slow.lease_owner)
    # Kill exactly the process running the step: a prefork child (its pool and beat live
    # on), or the embedded engine itself (then start another, as a supervisor would).
    os.kill(pid, signal.SIGKILL)
    if EMBEDDED:
        wait_until(lambda: not first.alive(), timeout=10, message="the engine to die")
        fresh_engine(STEVORA_LEASE_SECONDS=LONG_LEASE)
    run = wait_for_run(run.pk, timeout=45)
    assert run.status == "completed", run.error
    recovered = RunEvent.objects.get(run=run, kind="step_recovered", step_key="slow")
    # Recovered while the lease the killed worker held was still running: the registry saw
    # the death, not the lease's end.
    assert recovered.created_at < claimed_until - timedelta(seconds=10), (recovered.created_at, claimed_until)
    assert "died" in recovered.message, recovered.message
    dead = Worker.objects.get(pid=pid, stopped_at__isnull=False)
    assert dead.stop_reason == "died"
    assert Counter(line.split()[1] for line in read_ledger(ledger)) == {"a": 1, "slow": 1, "b": 1}


def test_a_step_whose_handler_no_live_worker_has_waits_for_one(fresh_engine: Any, workflow: Any) -> None:
    # This test process has test.late (so the definition loads); the engine does not.
    workflow({"name": "reg-late", "steps": [
        {"name": "first", "type": "task", "handler": "echo", "config": {"x": 1}},
        {"name": "late", "type": "task", "handler": "test.late"},
    ]})
    without = fresh_engine()
    run = start_run("reg-late", {}).run
    wait_until(lambda: StepExecution.objects.filter(run=run, key="late", status="waiting").exists(), timeout=30,
               message="the step to wait for a worker")
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING
    event = RunEvent.objects.get(run=run, kind="step_waiting_for_worker", step_key="late")
    assert "STEVORA_HANDLER_MODULES" in event.message and "'test.late'" in event.message
    assert "test.ledger" in event.message  # what the worker does have
    late = StepExecution.objects.get(run=run, key="late")
    assert late.attempt == 0 and late.failures == 0  # nothing spent
    # start_run --wait says so in the user's terms (and keeps waiting: exit 2 on its timeout).
    done = subprocess.run([sys.executable, "manage.py", "start_run", "reg-late", "--wait", "--timeout", "7"],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "waiting for a worker with handler 'test.late'" in done.stderr, done.stderr
    # The operator fixes the engine's environment and restarts it: the step runs, once.
    without.kill()
    fresh_engine(STEVORA_HANDLER_MODULES="tests.handlers,tests.llm_handlers,examples.handlers,tests.late_handlers")
    run = wait_for_run(run.pk, timeout=45)
    assert run.status == "completed", run.error
    late = StepExecution.objects.get(run=run, key="late")
    assert late.output == {"ran_on": "a worker that has the module"} and late.attempt == 1


def test_start_run_wait_says_when_no_engine_is_running(fresh_engine: Any, workflow: Any) -> None:
    workflow({"name": "reg-alone", "steps": [{"name": "a", "type": "task", "handler": "noop"}]})
    # fresh_engine stopped the shared engine and this test starts none.
    done = subprocess.run([sys.executable, "manage.py", "start_run", "reg-alone", "--wait", "--timeout", "7"],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "no engine is running" in done.stderr and "manage.py runengine" in done.stderr, done.stderr
    assert done.stderr.count("no engine is running") == 1


def test_workers_lists_the_live_engine_with_its_handlers(engine: Any) -> None:
    wait_until(lambda: Worker.objects.filter(stopped_at__isnull=True).exists(), timeout=30,
               message="a worker to register")
    done = subprocess.run([sys.executable, "manage.py", "workers", "--json"], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    live = json.loads(done.stdout)["live"]
    assert live and all("test.ledger" in w["handlers"] for w in live)
    assert {w["kind"] for w in live} == {"embedded" if EMBEDDED else "celery"}


def test_load_workflows_warns_about_a_handler_no_live_worker_has(engine: Any, tmp_path: Path) -> None:
    wait_until(lambda: Worker.objects.filter(stopped_at__isnull=True).exists(), timeout=30,
               message="a worker to register")
    path = tmp_path / "late.yaml"
    path.write_text("name: reg-warn\nsteps:\n  - name: late\n    type: task\n    handler: test.late\n")
    from io import StringIO

    err = StringIO()
    call_command("load_workflows", str(path), stdout=StringIO(), stderr=err)
    assert "no live worker has handler 'test.late'" in err.getvalue(), err.getvalue()
