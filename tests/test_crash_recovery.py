"""Crash safety with real processes and SIGKILL (DESIGN §1, §4, §10).

Counts side effects the DBOS way: a ledger handler appends one line per execution,
so we can see that completed steps never ran again and only the interrupted step did.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from runs.engine.executor import process_step
from runs.models import Run, RunEvent
from runs.services import start_run
from steps.models import StepExecution
from tests.conftest import AMQP, EMBEDDED, read_ledger, wait_for_run
from tests.support.workers import ROOT, subprocess_env, wait_until


def ledger_steps(definition_steps: int, *, slow: int | None = None, sleep: float = 3.0) -> list[dict[str, Any]]:
    steps = []
    for i in range(definition_steps):
        config: dict[str, Any] = {"ledger": "{{ input.ledger }}", "started": "{{ input.started }}"}
        if i == slow:
            config["sleep"] = sleep
        steps.append({"name": f"s{i}", "type": "task", "handler": "test.ledger", "config": config})
    return steps


def test_a_worker_killed_during_step_k_costs_only_step_k(fresh_engine: Any, workflow: Any, ledger: Path,
                                                         tmp_path: Path) -> None:
    started = tmp_path / "started.txt"
    started.touch()
    workflow({"name": "crash-k", "steps": ledger_steps(5, slow=2)})
    first = fresh_engine()
    run = start_run("crash-k", {"ledger": str(ledger), "started": str(started)}).run

    # Step k=3 (s2) has begun and sleeps: kill the whole worker, pool and beat included.
    wait_until(lambda: " s2 " in started.read_text(), timeout=30, message="s2 to start")
    first.kill()
    assert StepExecution.objects.get(run=run, key="s2").status == "running"

    fresh_engine()
    run = wait_for_run(run.pk, timeout=60)
    assert run.status == "completed", run.error
    done = Counter(line.split()[1] for line in read_ledger(ledger))
    assert done == {"s0": 1, "s1": 1, "s2": 1, "s3": 1, "s4": 1}
    s2 = StepExecution.objects.get(run=run, key="s2")
    assert s2.attempt == 2 and s2.recovery_count == 1
    assert RunEvent.objects.filter(run=run, kind="step_recovered", step_key="s2").count() == 1
    # Steps completed before the kill were never claimed again.
    assert list(StepExecution.objects.filter(run=run, key__in=["s0", "s1"]).values_list("attempt", flat=True)) == [1, 1]


@pytest.mark.parametrize("point", ["before_publish", "after_commit"])
def test_sigkill_between_commit_and_publish_loses_nothing(fresh_engine: Any, workflow: Any, ledger: Path,
                                                          tmp_path: Path, point: str) -> None:
    # A fan-out publishes (one branch is taken by the committing worker, the other is
    # published); the fault kills the process right after the commit, before the publish.
    once = tmp_path / "fault-fired"
    workflow({"name": "crash-publish", "steps": [
        {"name": "first", "type": "task", "handler": "test.ledger", "config": {"ledger": "{{ input.ledger }}"}},
        {"name": "fan", "type": "parallel", "branches": {
            "a": [{"name": "a1", "type": "task", "handler": "test.ledger", "config": {"ledger": "{{ input.ledger }}"}}],
            "b": [{"name": "b1", "type": "task", "handler": "test.ledger", "config": {"ledger": "{{ input.ledger }}"}}],
        }},
        {"name": "last", "type": "task", "handler": "test.ledger", "config": {"ledger": "{{ input.ledger }}"}},
    ]})
    doomed = fresh_engine(STEVORA_FAULT_POINT=point, STEVORA_FAULT_ONCE_FILE=str(once))
    run = start_run("crash-publish", {"ledger": str(ledger)}).run
    wait_until(once.exists, timeout=30, message="the fault point to fire")
    # Only the process at the fault point died. Embedded, that was the engine: start another.
    # A prefork pool replaced its killed child and carries on (killing the whole group now
    # could interrupt another step mid-flight, whose repeat would be legitimate but muddy).
    if EMBEDDED:
        wait_until(lambda: not doomed.alive(), timeout=10, message="the engine to die")
        fresh_engine()
    run = wait_for_run(run.pk, timeout=60)
    assert run.status == "completed", run.error
    assert Counter(line.split()[1] for line in read_ledger(ledger)) == {"first": 1, "a1": 1, "b1": 1, "last": 1}
    assert run.output is not None and run.output["step"] == "last"


def test_duplicate_delivery_of_one_message_runs_the_step_once(engine: Any, workflow: Any, ledger: Path) -> None:
    workflow({"name": "dup", "steps": [
        {"name": "gate", "type": "wait", "seconds": 1},
        {"name": "once", "type": "task", "handler": "test.ledger",
         "config": {"ledger": "{{ input.ledger }}", "sleep": 0.5}},
    ]})
    run = start_run("dup", {"ledger": str(ledger)}).run
    step = wait_until(lambda: StepExecution.objects.filter(run=run, key="once").first(), timeout=30)
    if EMBEDDED:
        # The embedded broker lives in the engine process: deliver the duplicates as
        # concurrent task bodies here, each on its own connection.
        def deliver() -> None:
            try:
                process_step(step.pk)
            finally:
                connection.close()

        threads = [threading.Thread(target=deliver) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        from runs.engine.tasks import run_step

        for _ in range(5):
            run_step.delay(step.pk)
    run = wait_for_run(run.pk)
    assert run.status == "completed"
    assert [line.split()[1] for line in read_ledger(ledger)] == ["once"]
    assert StepExecution.objects.get(pk=step.pk).attempt == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_redis(port: int, tmp: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    wait_until(up, timeout=10, message=f"redis on {port}")
    return proc


@pytest.mark.skipif(EMBEDDED, reason="the embedded default has no Redis to restart")
@pytest.mark.skipif(AMQP, reason="restarts a Redis broker; the RabbitMQ pass uses none")
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_runs_finish_when_redis_restarts_empty_mid_flight(fresh_engine: Any, workflow: Any, ledger: Path,
                                                          tmp_path: Path) -> None:
    port = _free_port()
    redis_proc = _start_redis(port, tmp_path)
    broker = f"redis://127.0.0.1:{port}/0"
    try:
        workflow({"name": "redis-restart", "steps": [
            {"name": "a", "type": "task", "handler": "test.ledger",
             "config": {"ledger": "{{ input.ledger }}", "sleep": 0.3}},
            {"name": "fan", "type": "map", "over": "{{ [1, 2, 3, 4] }}", "step": {
                "type": "task", "handler": "test.ledger", "config": {"ledger": "{{ input.ledger }}", "sleep": 0.3}}},
            {"name": "z", "type": "task", "handler": "test.ledger",
             "config": {"ledger": "{{ input.ledger }}", "sleep": 0.2}},
        ]})
        worker = fresh_engine(CELERY_BROKER_URL=broker)
        # Start the runs through the CLI so their doorbells ring on the private Redis.
        env = subprocess_env(CELERY_BROKER_URL=broker)
        run_ids = []
        for i in range(6):
            out = subprocess.run(
                [sys.executable, "manage.py", "start_run", "redis-restart", "--input",
                 f'{{"ledger": "{ledger}", "n": {i}}}'],
                cwd=ROOT, env=env, capture_output=True, text=True, check=True)
            run_ids.append(out.stdout.strip().splitlines()[-1])
        wait_until(lambda: StepExecution.objects.filter(run_id__in=run_ids, status="completed").count() >= 4,
                   timeout=30, message="some progress")
        # Redis dies and comes back empty: every queued and unacked message is gone.
        os.killpg(redis_proc.pid, signal.SIGKILL)
        redis_proc.wait()
        redis_proc = _start_redis(port, tmp_path)
        # Celery 5.x can exit on reconnection while long tasks are cancelled on connection
        # loss (celery/celery#9250); a process supervisor (compose's restart policy,
        # systemd) starts it again, and so do we. The runs must finish either way.
        supervised = [worker]

        def all_finished() -> bool:
            if not supervised[-1].alive():
                supervised.append(fresh_engine(CELERY_BROKER_URL=broker))
            return not Run.objects.filter(pk__in=run_ids, status__in=["running", "waiting"]).exists()

        wait_until(all_finished, timeout=120, interval=0.2, message="every run to finish")
        for run_id in run_ids:
            run = wait_for_run(run_id, timeout=90)
            assert run.status == "completed", (run.error, list(run.steps.values_list("key", "status")))
        # Every step has exactly one recorded result; side effects ran at least once.
        for run_id in run_ids:
            assert StepExecution.objects.filter(run_id=run_id, status="completed").count() == 7
        entries = Counter(tuple(line.split()[:2]) for line in read_ledger(ledger))
        assert len(entries) == 6 * 6  # 6 runs × (a + 4 items + z); the map parent runs no handler
    finally:
        try:
            os.killpg(redis_proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_nothing_stays_running_past_its_lease_after_a_kill(fresh_engine: Any, workflow: Any,
                                                           ledger: Path, tmp_path: Path) -> None:
    started = tmp_path / "started.txt"
    started.touch()
    workflow({"name": "many-kill", "steps": ledger_steps(3, slow=1, sleep=2.0)})
    first = fresh_engine()
    runs = [start_run("many-kill", {"ledger": str(ledger), "started": str(started), "n": i}).run for i in range(4)]
    wait_until(lambda: started.read_text().count(" s1 ") >= 1, timeout=30, message="a slow step to start")
    first.kill()
    # Steps running at the kill may have appended before dying (after their append, before their commit).
    interrupted = {(str(run_id), key) for run_id, key in
                   StepExecution.objects.filter(run__in=runs, status="running").values_list("run_id", "key")}
    fresh_engine()
    for run in runs:
        assert wait_for_run(run.pk, timeout=90).status == "completed"
    assert not StepExecution.objects.filter(run__in=runs, status="running").exists()
    per_step = Counter(tuple(line.split()[:2]) for line in read_ledger(ledger))
    assert all(count == 1 for step, count in per_step.items() if step not in interrupted), (per_step, interrupted)
    assert Run.objects.filter(pk__in=[r.pk for r in runs], status="completed").count() == 4
