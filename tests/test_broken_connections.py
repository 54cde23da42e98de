"""A worker whose database connections break while a handler runs (a PostgreSQL restart, a
proxy cutting idle connections) commits the result it has on a fresh connection: the step
does not run again."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from runs.engine.workers import NAMESPACE
from runs.services import start_run
from tests.conftest import EMBEDDED, read_ledger, wait_for_run
from tests.support.workers import wait_until

pytestmark = pytest.mark.skipif(EMBEDDED, reason="SQLite has no server connections to break")


def _cut_connections() -> int:
    """Terminate every other session of this database except the workers' liveness locks (a
    lost lock is a death, tested elsewhere): the engine's own connections all break."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid = %s)", [NAMESPACE])
        return int(cur.fetchone()[0])


def test_a_result_in_hand_is_committed_on_a_fresh_connection(engine: Any, workflow: Any, ledger: Path,
                                                             tmp_path: Path) -> None:
    started = tmp_path / "started.txt"
    started.touch()
    workflow({"name": "cut-conn", "steps": [
        {"name": "a", "type": "task", "handler": "test.ledger", "config": {"ledger": "{{ input.ledger }}"}},
        {"name": "slow", "type": "task", "handler": "test.ledger",
         "config": {"ledger": "{{ input.ledger }}", "started": "{{ input.started }}", "sleep": 1.5}},
        {"name": "b", "type": "task", "handler": "test.ledger", "config": {"ledger": "{{ input.ledger }}"}},
    ]})
    run = start_run("cut-conn", {"ledger": str(ledger), "started": str(started)}).run
    wait_until(lambda: " slow " in started.read_text(), timeout=30, message="the slow step to start")
    assert _cut_connections() >= 1
    run = wait_for_run(run.pk, timeout=60)
    assert run.status == "completed", run.error
    assert Counter(line.split()[1] for line in read_ledger(ledger)) == {"a": 1, "slow": 1, "b": 1}
    assert not run.history.filter(kind="step_recovered").exists()
