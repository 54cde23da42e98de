"""Flow control on the paths that reopen work: ``retry_run``, ``fork_run`` and a step put
back to ``ready`` go through admission like a new run or step (runs.engine.flow).

Every step is ``test.gate``: it blocks its run's slot until the gate file exists, and it
fails (it cannot write its ledger) while the ledger's directory is missing — so the same
step can hold a key, fail, and succeed when retried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runs.models import Run, RunEvent, RunStatus
from runs.services import fork_run, retry_run, start_run
from steps.models import StepExecution, StepStatus
from tests.conftest import wait_for_run
from tests.support.workers import wait_until

_GATE_STEP = {"name": "s", "type": "task", "handler": "test.gate", "retry": {"max_attempts": 1},
              "config": {"ledger": "{{ input.ledger }}", "gate": "{{ input.gate }}",
                         "block_attempts": "{{ input.block }}"}}


@pytest.fixture(autouse=True)
def _open_gate(tmp_path: Path) -> Any:
    """A holder blocked in its gate would hold a worker after a failed test: open it."""
    yield
    (tmp_path / "gate").touch()


def _args(tmp_path: Path, *, block: int = 0, broken: bool = False) -> dict[str, Any]:
    ledger = tmp_path / ("missing-dir" if broken else "ok") / "ledger.txt"
    (tmp_path / "ok").mkdir(exist_ok=True)
    return {"ledger": str(ledger), "gate": str(tmp_path / "gate"), "block": block, "k": "one"}


def _failed_run(name: str, tmp_path: Path) -> Run:
    run = wait_for_run(start_run(name, _args(tmp_path, broken=True)).run.pk)
    assert run.status == RunStatus.FAILED, run.error
    (tmp_path / "missing-dir").mkdir()  # the cause is fixed: a retry can succeed
    return run


def _holder(name: str, tmp_path: Path) -> Run:
    holder = start_run(name, _args(tmp_path, block=1)).run
    wait_until(lambda: StepExecution.objects.filter(run=holder, status=StepStatus.RUNNING).exists(), timeout=20,
               message="the holder's step to run")
    return holder


def _nothing_dispatched(run: Run) -> None:
    assert not StepExecution.objects.filter(
        run=run, status__in=(StepStatus.READY, StepStatus.RUNNING)).exists(), \
        list(StepExecution.objects.filter(run=run).values_list("key", "status"))


def test_a_retried_run_waits_for_its_workflow_key(engine: Any, workflow: Any, tmp_path: Path) -> None:
    workflow({"name": "flow-retry", "concurrency": {"limit": 1, "key": "{{ input.k }}"},
              "steps": [_GATE_STEP, {"name": "after", "type": "task", "handler": "test.value",
                                     "config": {"value": "done"}}]})
    failed = _failed_run("flow-retry", tmp_path)
    holder = _holder("flow-retry", tmp_path)
    retried = retry_run(failed.pk, actor="test")
    retried.refresh_from_db()
    assert retried.status == RunStatus.QUEUED
    _nothing_dispatched(retried)
    assert StepExecution.objects.get(run=retried, key="s").status == StepStatus.FAILED  # reopened when admitted
    assert RunEvent.objects.filter(run=retried, kind="run_queued").exists()
    (tmp_path / "gate").touch()
    assert wait_for_run(holder.pk).status == RunStatus.COMPLETED
    retried = wait_for_run(retried.pk)
    assert retried.status == RunStatus.COMPLETED, retried.error
    assert retried.output == "done"
    assert StepExecution.objects.get(run=retried, key="s").attempt == 2
    assert RunEvent.objects.filter(run=retried, kind="run_running", data__admitted=True).count() == 1


def test_a_retried_run_with_a_free_slot_runs_at_once(engine: Any, workflow: Any, tmp_path: Path) -> None:
    workflow({"name": "flow-retry-free", "concurrency": {"limit": 1, "key": "{{ input.k }}"}, "steps": [_GATE_STEP]})
    failed = _failed_run("flow-retry-free", tmp_path)
    retried = retry_run(failed.pk, actor="test")
    assert retried.status == RunStatus.RUNNING
    assert wait_for_run(retried.pk).status == RunStatus.COMPLETED
    assert not RunEvent.objects.filter(run=retried, kind="run_queued").exists()


def test_a_fork_waits_for_its_workflow_key(engine: Any, workflow: Any, tmp_path: Path) -> None:
    workflow({"name": "flow-fork", "concurrency": {"limit": 1, "key": "{{ input.k }}"},
              "steps": [{"name": "first", "type": "task", "handler": "test.value", "config": {"value": 1}},
                        _GATE_STEP]})
    source = wait_for_run(start_run("flow-fork", _args(tmp_path)).run.pk)
    assert source.status == RunStatus.COMPLETED
    holder = _holder("flow-fork", tmp_path)
    fork = fork_run(source.pk, from_step="s", actor="test")
    fork.refresh_from_db()
    assert fork.status == RunStatus.QUEUED and fork.concurrency_key == holder.concurrency_key
    assert list(StepExecution.objects.filter(run=fork).values_list("key", "status")) == [
        ("first", StepStatus.COMPLETED)]  # the kept step only: "s" starts when admitted
    (tmp_path / "gate").touch()
    fork = wait_for_run(fork.pk)
    assert fork.status == RunStatus.COMPLETED, fork.error
    assert StepExecution.objects.get(run=fork, key="s").status == StepStatus.COMPLETED
    assert RunEvent.objects.filter(run=fork, kind="run_started", data__admitted=True).count() == 1


def test_a_step_reopened_by_retry_waits_for_its_step_key(engine: Any, workflow: Any, tmp_path: Path) -> None:
    workflow({"name": "flow-retry-step", "steps": [{**_GATE_STEP, "concurrency": {"limit": 1}}]})
    failed = _failed_run("flow-retry-step", tmp_path)
    holder = _holder("flow-retry-step", tmp_path)
    retried = retry_run(failed.pk, actor="test")
    assert retried.status == RunStatus.RUNNING
    row = StepExecution.objects.get(run=retried, key="s")
    assert row.status == StepStatus.QUEUED and row.dispatched_at is None
    (tmp_path / "gate").touch()
    assert wait_for_run(holder.pk).status == RunStatus.COMPLETED
    assert wait_for_run(retried.pk).status == RunStatus.COMPLETED
    row.refresh_from_db()
    assert (row.status, row.attempt) == (StepStatus.COMPLETED, 2)
    assert RunEvent.objects.filter(run=retried, kind="step_admitted", step_key="s").count() == 1


def test_a_parked_step_requeued_by_a_decision_waits_for_its_step_key(fresh_engine: Any, workflow: Any) -> None:
    # No engine: the rows alone. A work step parked for a decision (as an llm step waiting
    # for a tool approval) freed its slot; put back by the decision, it asks for it again.
    from runs.engine import recovery
    from runs.services import requeue_waiting_step

    workflow({"name": "flow-requeue", "steps": [
        {"name": "s", "type": "task", "handler": "test.value", "concurrency": {"limit": 1}}]})
    holder = start_run("flow-requeue", {}).run
    parked_run = start_run("flow-requeue", {}).run
    parked = StepExecution.objects.get(run=parked_run)
    assert parked.status == StepStatus.QUEUED
    assert StepExecution.objects.filter(pk=parked.pk, status=StepStatus.QUEUED).update(
        status=StepStatus.WAITING) == 1  # as if it had run and parked
    assert requeue_waiting_step(parked.pk, actor="test", reason="decided")
    parked.refresh_from_db()
    assert (parked.status, parked.dispatched_at) == (StepStatus.QUEUED, None)  # the holder has the slot
    StepExecution.objects.filter(run=holder).update(status=StepStatus.COMPLETED)
    assert recovery.admit_waiting() == 1
    parked.refresh_from_db()
    assert parked.status == StepStatus.READY
