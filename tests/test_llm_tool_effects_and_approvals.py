"""Tools declare what running them twice does. A worker killed inside an irreversible tool
parks the step for a person's decision (re-run / record a result / fail) and the tool is
never entered again on its own; read_only and idempotent tools run again with the same
key. A tool with ``requires_approval`` waits, holding no worker, for its arguments to be
approved, edited or rejected. Counts at the model server and in the tool's ledger prove
what ran."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from approvals.models import Approval, ApprovalStatus
from approvals.services import DecisionError, decide
from providers.models import ToolCall, ToolCallStatus
from runs.definitions import DefinitionError
from runs.models import Run, RunStatus, Workflow
from runs.services import cancel_run, load_workflow, retry_run, start_run
from steps.models import StepExecution, StepStatus
from tests.conftest import read_ledger, wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    llm_workflow,
    make_provider,
    output_of,
)
from tests.support.workers import wait_until

CHARGE = {"handler": "test.tool.charge", "name": "charge", "description": "Charge a card",
          "parameters": {"type": "object", "required": ["amount"], "additionalProperties": False,
                         "properties": {"amount": {"type": "integer", "minimum": 1}}}}
ONE_CHARGE = ({"tool_calls": [{"id": "c1", "name": "charge", "arguments": {"amount": 5}}]}, {"text": "charged"})


def entries(ledger: Any) -> list[str]:
    return [line for line in read_ledger(ledger) if line.startswith("enter ")]


def pending_approval(run_id: Any, kind: str) -> Any:
    return wait_until(lambda: Approval.objects.filter(run_id=run_id, kind=kind, status=ApprovalStatus.PENDING).first(),
                      timeout=30, message=f"a pending {kind} approval")


def assert_parked(run_id: Any) -> None:
    step = StepExecution.objects.get(run_id=run_id, key="ask")
    # Waiting holds nothing: no lease, no worker.
    assert (step.status, step.lease_owner, step.lease_until) == (StepStatus.WAITING, "", None)
    assert Run.objects.get(pk=run_id).status == RunStatus.WAITING


def kill_inside_charge(fresh_engine: Any, workflow: Any, llm_server: Any, ledger: Any, name: str,
                       effects: str | None) -> Run:
    """Start a run whose tool sleeps, SIGKILL its worker inside the tool, start a new engine."""
    make_provider(llm_server, "agent", max_retries=0)
    llm_server.script("agent", *ONE_CHARGE)
    tool = {**CHARGE, **({"effects": effects} if effects else {})}
    workflow(llm_workflow(name, provider="agent", tools=[tool]))
    worker = fresh_engine()
    run = start_run(name, {"ledger": str(ledger), "tool_sleep": 30}).run
    wait_until(lambda: len(entries(ledger)) == 1, timeout=30, message="the tool to be entered")
    worker.kill()
    fresh_engine()
    return run


def test_a_worker_killed_inside_an_irreversible_tool_parks_the_step_and_rerun_runs_it_once_more(
        fresh_engine: Any, workflow: Any, llm_server: Any, ledger: Any, alice: Any) -> None:
    run = kill_inside_charge(fresh_engine, workflow, llm_server, ledger, "charge-rerun", None)  # default: irreversible

    approval = pending_approval(run.pk, "tool_crash")
    wait_until(lambda: Run.objects.get(pk=run.pk).status == RunStatus.WAITING, timeout=30, message="the run to wait")
    assert_parked(run.pk)
    row = ToolCall.objects.get(call_id="c1")
    assert (row.status, row.effects, row.executions) == (ToolCallStatus.NEEDS_DECISION, "irreversible", 1)
    assert approval.content["arguments"] == {"amount": 5} and approval.content["result"] is None
    # The handler was entered once and never again on its own; the model was asked once.
    assert len(entries(ledger)) == 1 and llm_server.count("agent") == 1

    decide(approval.pk, user=alice, approve=True, comment="the charge did not go through; run it again")
    run = wait_for_run(run.pk, timeout=60)
    assert run.status == "completed", run.error
    key = f"{run.pk}:ask:tool:1:c1"
    assert entries(ledger) == [f'enter {{"amount": 5}} {key}'] * 2  # once cut off, once re-run, same key
    assert read_ledger(ledger).count(f"done {key}") == 1
    row.refresh_from_db()
    assert (row.status, row.executions, row.output) == (ToolCallStatus.COMPLETED, 2, {"charged": 5})
    assert [(d["kind"], d["action"], d["by"]) for d in row.decisions] == [("crash", "rerun", "alice")]
    drawn = StringIO()
    call_command("show_run", str(run.pk), stdout=drawn)
    assert "⚙ charge(amount=5) (ran 2×) [decided: rerun by alice]" in drawn.getvalue()
    assert llm_server.count("agent") == 2  # round 1 replayed from the record, round 2 asked once


def test_a_result_recorded_by_hand_answers_the_model_and_the_tool_is_not_run_again(
        fresh_engine: Any, workflow: Any, llm_server: Any, ledger: Any, alice: Any) -> None:
    run = kill_inside_charge(fresh_engine, workflow, llm_server, ledger, "charge-record", "irreversible")
    approval = pending_approval(run.pk, "tool_crash")

    decide(approval.pk, user=alice, approve=True,
           content={**approval.content, "result": {"charged": 5, "receipt": "r-77"}})
    run = wait_for_run(run.pk, timeout=60)
    assert run.status == "completed", run.error
    assert len(entries(ledger)) == 1  # never re-entered
    row = ToolCall.objects.get(call_id="c1")
    assert (row.status, row.executions, row.output) == (ToolCallStatus.COMPLETED, 1, {"charged": 5, "receipt": "r-77"})
    second = llm_server.requests("agent")[1]["body"]
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "c1",
                                      "content": json.dumps({"charged": 5, "receipt": "r-77"})}


def test_failing_the_step_by_decision_fails_the_run_without_running_the_tool(
        fresh_engine: Any, workflow: Any, llm_server: Any, ledger: Any, alice: Any) -> None:
    run = kill_inside_charge(fresh_engine, workflow, llm_server, ledger, "charge-fail", None)
    approval = pending_approval(run.pk, "tool_crash")

    decide(approval.pk, user=alice, approve=False, comment="refund by hand")
    run = wait_for_run(run.pk, timeout=30)
    assert run.status == "failed"
    error = run.error or {}
    assert error["type"] == "tool_call_failed_by_decision" and "refund by hand" in error["message"]
    assert len(entries(ledger)) == 1 and llm_server.count("agent") == 1
    assert ToolCall.objects.get(call_id="c1").status == ToolCallStatus.FAILED


def test_a_worker_killed_inside_an_idempotent_tool_runs_it_again_with_the_same_key(
        fresh_engine: Any, workflow: Any, llm_server: Any, ledger: Any) -> None:
    run = kill_inside_charge(fresh_engine, workflow, llm_server, ledger, "charge-idem", "idempotent")

    run = wait_for_run(run.pk, timeout=60)
    assert run.status == "completed", run.error
    key = f"{run.pk}:ask:tool:1:c1"
    assert entries(ledger) == [f'enter {{"amount": 5}} {key}'] * 2
    assert not Approval.objects.filter(run_id=run.pk).exists()
    assert ToolCall.objects.get(call_id="c1").executions == 2
    assert llm_server.count("agent") == 2


# --- requires_approval ------------------------------------------------------------------------


def start_guarded(workflow: Any, llm_server: Any, ledger: Any, name: str, *answers: dict[str, Any]) -> Run:
    make_provider(llm_server, "agent", max_retries=0)
    llm_server.script("agent", *answers)
    workflow(llm_workflow(name, provider="agent", tools=[{**CHARGE, "requires_approval": True}]))
    return start_run(name, {"ledger": str(ledger)}).run


def test_an_approved_tool_call_runs_after_the_decision_and_not_before(
        engine: Any, workflow: Any, llm_server: Any, ledger: Any, alice: Any) -> None:
    run = start_guarded(workflow, llm_server, ledger, "guarded-approve", *ONE_CHARGE)
    approval = pending_approval(run.pk, "tool_call")
    wait_until(lambda: Run.objects.get(pk=run.pk).status == RunStatus.WAITING, timeout=30, message="the run to wait")
    assert_parked(run.pk)
    assert approval.content == {"tool": "charge", "arguments": {"amount": 5}, "round": 1, "call_id": "c1"}
    assert read_ledger(ledger) == []  # not run before the decision

    decide(approval.pk, user=alice, approve=True, comment="ok")
    run = wait_for_run(run.pk)
    assert run.status == "completed", run.error
    assert entries(ledger) == [f'enter {{"amount": 5}} {run.pk}:ask:tool:1:c1']
    assert llm_server.count("agent") == 2
    call = output_of(run)["tool_calls"][0]
    assert call["status"] == "completed" and call["decisions"][0]["action"] == "approve"


def test_edited_arguments_are_what_the_tool_runs_with_and_bad_edits_are_refused(
        engine: Any, workflow: Any, llm_server: Any, ledger: Any, alice: Any) -> None:
    run = start_guarded(workflow, llm_server, ledger, "guarded-edit", *ONE_CHARGE)
    approval = pending_approval(run.pk, "tool_call")

    with pytest.raises(DecisionError, match=r"content.arguments: amount: 0 is less than the minimum of 1"):
        decide(approval.pk, user=alice, approve=True, content={**approval.content, "arguments": {"amount": 0}})
    assert Approval.objects.get(pk=approval.pk).status == ApprovalStatus.PENDING  # nothing was decided

    decide(approval.pk, user=alice, approve=True, content={**approval.content, "arguments": {"amount": 3}})
    run = wait_for_run(run.pk)
    assert run.status == "completed", run.error
    assert entries(ledger) == [f'enter {{"amount": 3}} {run.pk}:ask:tool:1:c1']
    row = ToolCall.objects.get(call_id="c1")
    assert row.arguments == {"amount": 3} and row.decisions[0]["asked"] == {"amount": 5}
    second = llm_server.requests("agent")[1]["body"]
    assert second["messages"][-1]["content"] == json.dumps({"charged": 3})


def test_a_rejected_tool_call_never_runs_and_the_model_reads_the_reason(
        engine: Any, workflow: Any, llm_server: Any, ledger: Any, alice: Any) -> None:
    run = start_guarded(workflow, llm_server, ledger, "guarded-reject",
                        ONE_CHARGE[0], {"text": "I will not charge the card."})
    approval = pending_approval(run.pk, "tool_call")

    decide(approval.pk, user=alice, approve=False, comment="customer asked for a refund instead")
    run = wait_for_run(run.pk)
    assert run.status == "completed", run.error
    assert read_ledger(ledger) == []
    second = llm_server.requests("agent")[1]["body"]
    assert second["messages"][-1]["content"] == "error: rejected by alice: customer asked for a refund instead"
    assert ToolCall.objects.get(call_id="c1").status == ToolCallStatus.FAILED


def test_cancelling_a_run_parked_on_a_tool_approval_closes_the_request(
        engine: Any, workflow: Any, llm_server: Any, ledger: Any, alice: Any) -> None:
    run = start_guarded(workflow, llm_server, ledger, "guarded-cancel", *ONE_CHARGE)
    approval = pending_approval(run.pk, "tool_call")
    cancel_run(run.pk, actor="test")
    assert Approval.objects.get(pk=approval.pk).status == ApprovalStatus.CANCELLED
    with pytest.raises(DecisionError):
        decide(approval.pk, user=alice, approve=True)
    assert read_ledger(ledger) == []


def test_a_run_failed_by_a_sibling_while_parked_asks_for_the_decision_again_when_retried(
        engine: Any, workflow: Any, llm_server: Any, ledger: Any, alice: Any) -> None:
    make_provider(llm_server, "agent", max_retries=0)
    llm_server.script("agent", *ONE_CHARGE)
    workflow({"name": "guarded-retry", "steps": [{"name": "both", "type": "parallel", "branches": {
        "agent": [{"name": "ask", "type": "llm", "provider": "agent", "tools": [{**CHARGE, "requires_approval": True}],
                   "messages": [{"role": "user", "content": "charge"}]}],
        "gate": [{"name": "pause", "type": "wait", "seconds": 2},
                 {"name": "flaky", "type": "task", "handler": "test.fail_times", "config": {"times": 1}}],
    }}]})
    run = start_run("guarded-retry", {"ledger": str(ledger)}).run
    first = pending_approval(run.pk, "tool_call")
    run = wait_for_run(run.pk)
    assert run.status == "failed"  # the sibling failed while ask was parked: its request closed
    assert Approval.objects.get(pk=first.pk).status == ApprovalStatus.CANCELLED

    retry_run(run.pk, actor="test")
    second = wait_until(lambda: Approval.objects.filter(run_id=run.pk, status=ApprovalStatus.PENDING)
                        .exclude(pk=first.pk).first(), timeout=30, message="a new request after the retry")
    assert second.content == first.content
    assert llm_server.count("agent") == 1  # the re-executed step replayed its recorded turn
    decide(second.pk, user=alice, approve=True)
    run = wait_for_run(run.pk)
    assert run.status == "completed", run.error
    assert len(entries(ledger)) == 1


def test_effects_must_be_one_of_the_three_classes(db: Any) -> None:
    with pytest.raises(DefinitionError) as info:
        load_workflow(llm_workflow("bad-effects", provider="x", tools=[{**CHARGE, "effects": "sometimes"}]))
    paths = dict(info.value.errors)
    assert "steps[0].tools[0].effects" in paths, paths
    assert "read_only" in paths["steps[0].tools[0].effects"]
    assert not Workflow.objects.filter(name="bad-effects").exists()
