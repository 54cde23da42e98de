from __future__ import annotations

from typing import Any

from runs.services import start_run
from tests.conftest import read_ledger, wait_for_run


def test_a_sequence_of_tasks_runs_to_completion(engine: Any, workflow: Any, ledger: Any) -> None:
    workflow({"name": "seq", "steps": [
        {"name": f"s{i}", "type": "task", "handler": "test.ledger",
         "config": {"ledger": "{{ input.ledger }}", "value": i}} for i in range(3)
    ]})
    run = start_run("seq", {"ledger": str(ledger)}).run
    run = wait_for_run(run.pk)
    assert run.status == "completed", run.error
    assert run.output is not None and run.output["value"] == 2
    assert [line.split()[1] for line in read_ledger(ledger)] == ["s0", "s1", "s2"]
