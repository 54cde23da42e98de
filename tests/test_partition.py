"""A worker cut off from PostgreSQL and Redis mid-step, past its lease (issue 9).

The worker runs in a network namespace of its own, reaching the database and the broker
through a veth link (tests/support/netns.py). Its step blocks; the link is cut; the
lease runs out; a worker outside runs the step to completion and the run finishes.
When the link is back, the cut-off handler returns and its worker tries to commit: the
fence refuses it. Side effects are at-least-once (the ledger shows the handler twice),
but the step was completed once, with the second worker's output, and the run once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from runs.models import Run, RunEvent, RunStatus
from runs.services import start_run
from steps.models import StepExecution, StepStatus
from tests.conftest import EMBEDDED, read_ledger, wait_for_run
from tests.support.netns import Forwarder, Partition, Unavailable
from tests.support.workers import Proc, celery_worker, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(EMBEDDED, reason="needs PostgreSQL + Redis: a partition cuts a worker off from a "
                                        "database and broker across a network link, and the embedded engine "
                                        "keeps both inside its own process"),
]


@pytest.fixture
def partition() -> Any:
    try:
        part = Partition.create()
    except Unavailable as exc:
        pytest.skip(f"cannot make a network namespace here: {exc}")
    yield part
    part.delete()


def _lines(ledger: Path, kind: str, run_id: Any, key: str) -> list[list[str]]:
    return [parts for parts in (line.split() for line in read_ledger(ledger))
            if parts[0] == kind and parts[1] == str(run_id) and parts[2] == key]


def _cut_off_worker(part: Partition, postgres: Forwarder, redis_fwd: Forwarder) -> Proc:
    """A Celery worker (no beat) inside the namespace, on this test's database and queue."""
    db = connection.settings_dict
    broker_db = settings.CELERY_BROKER_URL.rstrip("/").rsplit("/", 1)[1]
    proc = celery_worker(concurrency=1, beat=False, env={
        "DATABASE_URL": f"postgres://{db.get('USER') or 'postgres'}@{postgres.host}:{postgres.port}/{db['NAME']}",
        "CELERY_BROKER_URL": f"redis://{redis_fwd.host}:{redis_fwd.port}/{broker_db if broker_db.isdigit() else 0}",
        "TEST_WORKER_NAME": "cut-off",
    })
    proc.argv = part.wrap(proc.argv)
    return proc


def test_a_worker_cut_off_past_its_lease_is_fenced_out_and_the_run_completes_once(
        fresh_engine: Any, partition: Partition, workflow: Any, ledger: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    workflow({"name": "partitioned", "steps": [
        {"name": "hold", "type": "task", "handler": "test.gate",
         "config": {"ledger": str(ledger), "gate": str(gate), "block_attempts": 1}},
        {"name": "after", "type": "task", "handler": "test.value", "config": {"value": "after"}},
    ]})
    workflow({"name": "probe", "steps": [{"name": "probe", "type": "task", "handler": "test.gate",
                                          "config": {"ledger": str(ledger), "gate": str(gate), "block_attempts": 0}}]})
    db = connection.settings_dict
    postgres = Forwarder(partition.host_ip, (db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)))
    redis_url = settings.CELERY_BROKER_URL.split("//", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    redis_host, _, redis_port = redis_url.partition(":")
    redis_fwd = Forwarder(partition.host_ip, (redis_host or "127.0.0.1", int(redis_port or 6379)))
    cut_off = _cut_off_worker(partition, postgres, redis_fwd)
    try:
        # Only the cut-off worker consumes: it takes attempt 1 of `hold`, which blocks.
        cut_off.start(timeout=60)
        run = start_run("partitioned", {}).run
        first = wait_until(lambda: _lines(ledger, "start", run.pk, "hold"), timeout=30,
                           message="the cut-off worker to start `hold`")
        assert (first[0][3], first[0][5]) == ("1", "cut-off")

        partition.cut()
        # The lease runs out (no heartbeat gets through); a worker outside, with the
        # reconciler, takes the step over and finishes the run.
        outside = fresh_engine(TEST_WORKER_NAME="outside")
        done = wait_for_run(run.pk, timeout=60)
        assert done.status == RunStatus.COMPLETED, done.error
        hold = StepExecution.objects.get(run_id=run.pk, key="hold")
        assert hold.status == StepStatus.COMPLETED
        won: dict[str, Any] = hold.output or {}
        assert won.get("worker") == "outside" and won["attempt"] >= 2, won
        assert _lines(ledger, "end", run.pk, "hold") == [
            ["end", str(run.pk), "hold", str(won["attempt"]), str(won["pid"]), "outside"]]
        outside.stop()

        # Heal, and let the cut-off handler return: its worker commits, and is refused.
        partition.heal()
        gate.touch()
        wait_until(lambda: any(p[3] == "1" for p in _lines(ledger, "end", run.pk, "hold")), timeout=60,
                   message="the cut-off handler to return after the partition healed")
        # The cut-off worker (one process, one slot) takes the probe only after it has
        # finished with `hold`: once the probe completed, its commit has been tried.
        probe = start_run("probe", {}).run
        probe_done = wait_for_run(probe.pk, timeout=90)
        assert probe_done.status == RunStatus.COMPLETED
        assert (probe_done.steps.get().output or {}).get("worker") == "cut-off"  # it is connected again
    finally:
        cut_off.kill()
        postgres.close()
        redis_fwd.close()

    hold.refresh_from_db()
    assert hold.status == StepStatus.COMPLETED
    assert hold.output == won, f"the fenced-out attempt overwrote the result: {hold.output}"
    assert hold.attempt == won["attempt"], "nobody claimed `hold` after its commit"
    history = list(RunEvent.objects.filter(run_id=run.pk).values_list("kind", "step_key", "data"))
    completions = [data for kind, key, data in history if kind == "step_completed" and key == "hold"]
    assert len(completions) == 1, history
    assert completions[0]["attempt"] == won["attempt"]
    assert [kind for kind, _, _ in history].count("run_completed") == 1
    assert Run.objects.get(pk=run.pk).status == RunStatus.COMPLETED
    assert StepExecution.objects.get(run_id=run.pk, key="after").status == StepStatus.COMPLETED
    # At-least-once side effects: the handler ran to its end twice, once on each side.
    ends = sorted((p[3], p[5]) for p in _lines(ledger, "end", run.pk, "hold"))
    assert ends == [("1", "cut-off"), (str(won["attempt"]), "outside")], read_ledger(ledger)
    print(f"\npartition: hold attempt 1 on the cut-off worker, attempt {won['attempt']} outside; "
          f"ledger={read_ledger(ledger)}", file=sys.stderr)
