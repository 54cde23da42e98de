# mypy: disable-error-code="index,type-var"
"""Approval steps end to end with a real engine (Celery workers on PostgreSQL + Redis, or embedded)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.db import connection

from approvals.models import Approval, ApprovalStatus
from approvals.services import DecisionError, decide, pending_for
from runs.models import RunEvent
from runs.services import start_run
from steps.models import StepExecution
from tests.approval_support import busy_steps, finished, pending_approval, queued_messages, review_workflow, wait_parked
from tests.support.workers import wait_until


def test_a_run_waits_on_an_approval_holding_nothing_and_finishes_once_approved(
        engine: Any, workflow: Any, alice: User) -> None:
    workflow(review_workflow())
    run = start_run("review-flow", {"topic": "tides"}).run
    wait_parked(run.pk)
    approval = pending_approval(run.pk)
    assert approval.content == {"text": "tides"}
    assert approval.instructions == "Check the draft for tides"
    # Waiting holds nothing: no step of the run is running or ready, no message queued or reserved.
    assert busy_steps([run.pk]) == 0
    assert wait_until(lambda: queued_messages() == 0, timeout=60, message="an empty queue")
    assert StepExecution.objects.get(run_id=run.pk, key="review").status == "waiting"

    decision = decide(approval.pk, user=alice, approve=True, comment="looks right")
    assert decision.output["approved"] is True and decision.output["decided_by"] == "alice"

    run = finished(run.pk)
    assert run.status == "completed", run.error
    assert run.output == {"published": {"text": "tides"}, "approved": True}
    review = StepExecution.objects.get(run_id=run.pk, key="review")
    assert review.output["comment"] == "looks right" and review.output["decided_at"]
    kinds = {(e.kind, e.actor) for e in RunEvent.objects.filter(run_id=run.pk, step_key="review")}
    assert ("approval_requested", "") in kinds and ("approval_approved", "alice") in kinds


def test_a_rejection_takes_the_branch_and_the_loop_asks_again(engine: Any, workflow: Any, alice: User) -> None:
    workflow(review_workflow())
    run = start_run("review-flow", {"topic": "reefs"}).run
    first = pending_approval(run.pk)
    decide(first.pk, user=alice, approve=False, comment="too short")
    second = pending_approval(run.pk, "review2")
    assert second.content == {"text": "revised reefs"}
    assert StepExecution.objects.get(run_id=run.pk, key="review").output["approved"] is False
    decide(second.pk, user=alice, approve=True)
    run = finished(run.pk)
    assert run.status == "completed", run.error
    assert [k for k in StepExecution.objects.filter(run_id=run.pk).order_by("id").values_list("key", flat=True)] == [
        "draft", "review", "decide", "revise", "review2", "publish"]


def test_edited_content_flows_on_to_later_steps(engine: Any, workflow: Any, alice: User) -> None:
    workflow(review_workflow(allow_edit=True))
    run = start_run("review-flow", {"topic": "kelp"}).run
    approval = pending_approval(run.pk)
    decide(approval.pk, user=alice, approve=True, content={"text": "kelp, edited by a person"})
    run = finished(run.pk)
    assert run.output["published"] == {"text": "kelp, edited by a person"}
    approval.refresh_from_db()
    assert approval.content_edited and approval.content == {"text": "kelp"}


def test_editing_is_refused_where_the_step_does_not_allow_it(engine: Any, workflow: Any, alice: User) -> None:
    workflow(review_workflow())
    run = start_run("review-flow", {"topic": "kelp"}).run
    approval = pending_approval(run.pk)
    with pytest.raises(DecisionError, match="does not allow editing"):
        decide(approval.pk, user=alice, approve=True, content={"text": "sneaky"})
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.PENDING


@pytest.mark.parametrize(("on_timeout", "expected"), [("approve", "completed-approved"),
                                                      ("reject", "revise"), ("fail", "failed")])
def test_a_timeout_applies_on_timeout(engine: Any, workflow: Any, on_timeout: str, expected: str) -> None:
    workflow(review_workflow(timeout_seconds=0.5, on_timeout=on_timeout))
    run = start_run("review-flow", {"topic": "surf"}).run
    if expected == "revise":
        pending_approval(run.pk, "review2")
        assert StepExecution.objects.get(run_id=run.pk, key="review").output["timed_out"] is True
    else:
        run = finished(run.pk)
        if expected == "failed":
            assert run.status == "failed"
            assert run.error["type"] == "approval_timeout"
        else:
            assert run.status == "completed", run.error
            assert run.output["approved"] is True
    approval = Approval.objects.get(run_id=run.pk, step_key="review")
    assert approval.status == ApprovalStatus.EXPIRED
    assert RunEvent.objects.filter(run_id=run.pk, kind="approval_expired").exists()


def test_deciding_twice_gives_one_decision_and_a_clear_refusal(engine: Any, workflow: Any, alice: User) -> None:
    workflow(review_workflow())
    run = start_run("review-flow", {"topic": "gulls"}).run
    approval = pending_approval(run.pk)
    decide(approval.pk, user=alice, approve=True)
    with pytest.raises(DecisionError, match=r"already approved by alice"):
        decide(approval.pk, user=alice, approve=False)
    finished(run.pk)
    assert RunEvent.objects.filter(run_id=run.pk, kind__in=["approval_approved", "approval_rejected"]).count() == 1


def test_fifty_racing_decisions_give_exactly_one_winner(engine: Any, workflow: Any, alice: User) -> None:
    workflow(review_workflow())
    run = start_run("review-flow", {"topic": "storm"}).run
    approval = pending_approval(run.pk)
    barrier = threading.Barrier(50)
    results: list[str] = []
    lock = threading.Lock()

    def racer(i: int) -> None:
        try:
            barrier.wait()
            decide(approval.pk, user=alice, approve=True, comment=f"racer {i}")
            outcome = "won"
        except DecisionError:
            outcome = "refused"
        except Exception as exc:  # anything else is a bug worth seeing
            outcome = f"error {type(exc).__name__}: {exc}"
        finally:
            connection.close()  # each thread had its own connection
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("won") == 1, results
    assert results.count("refused") == 49, results
    approval.refresh_from_db()
    assert RunEvent.objects.filter(run_id=run.pk, kind__in=["approval_approved", "approval_rejected"]).count() == 1
    review_output = StepExecution.objects.get(run_id=run.pk, key="review").output
    assert review_output["comment"] == approval.comment
    assert finished(run.pk).status == "completed"


def test_a_user_outside_the_named_group_is_refused_and_nothing_changes(
        engine: Any, workflow: Any, alice: User, bob: User) -> None:
    workflow(review_workflow(approvers={"groups": ["legal"]}))
    run = start_run("review-flow", {"topic": "contracts"}).run
    approval = pending_approval(run.pk)
    history = RunEvent.objects.filter(run_id=run.pk).count()
    with pytest.raises(PermissionDenied, match="not among the approvers"):
        decide(approval.pk, user=alice, approve=True)
    with pytest.raises(PermissionDenied, match="lacks the permission"):
        decide(approval.pk, user=bob, approve=True)
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.PENDING and approval.decided_at is None
    assert StepExecution.objects.get(run_id=run.pk, key="review").status == "waiting"
    assert RunEvent.objects.filter(run_id=run.pk).count() == history
    assert pending_for(alice) == []

    alice.groups.add(Group.objects.create(name="legal"))
    alice = User.objects.get(pk=alice.pk)  # fresh permission cache
    assert [a.pk for a in pending_for(alice)] == [approval.pk]
    decide(approval.pk, user=alice, approve=True)
    assert finished(run.pk).status == "completed"


def test_the_approve_command_decides_by_run_id_and_pending_approvals_lists_it(
        engine: Any, workflow: Any, alice: User, capsys: Any) -> None:
    workflow(review_workflow())
    run = start_run("review-flow", {"topic": "dunes"}).run
    approval = pending_approval(run.pk)
    call_command("pending_approvals")
    table = capsys.readouterr().out
    assert str(approval.pk) in table and "review-flow / review" in table
    call_command("approve", str(run.pk), "--comment", "ship it", "--as", "alice")
    assert "approved by alice" in capsys.readouterr().out
    assert finished(run.pk).status == "completed"
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no pending approval"):
        call_command("approve", str(run.pk), "--reject")


def test_cancelling_a_waiting_run_cancels_its_approval(engine: Any, workflow: Any, alice: User) -> None:
    from runs.services import cancel_run

    workflow(review_workflow())
    run = start_run("review-flow", {"topic": "fog"}).run
    approval = pending_approval(run.pk)
    cancel_run(run.pk, actor="test")
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.CANCELLED
    with pytest.raises(DecisionError, match="cancelled"):
        decide(approval.pk, user=alice, approve=True)


def test_pending_approvals_json_lists_what_a_user_may_decide(engine: Any, workflow: Any, alice: User,
                                                             bob: User, capsys: Any) -> None:
    import json

    workflow(review_workflow())
    run = start_run("review-flow", {"topic": "capes"}).run
    approval = pending_approval(run.pk)
    call_command("pending_approvals", "--json", "--as", "alice")
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["run"], r["step"]) for r in rows] == [(approval.pk, str(run.pk), "review")]
    call_command("pending_approvals", "--json", "--as", "bob")
    assert json.loads(capsys.readouterr().out) == []


def test_a_run_failed_by_an_approval_timeout_can_be_retried_and_asks_again(
        engine: Any, workflow: Any, alice: User) -> None:
    from runs.services import retry_run

    workflow({"name": "strict-review", "steps": [
        {"name": "review", "type": "approval", "content": "{{ input.doc }}", "timeout_seconds": 0.3,
         "on_timeout": "fail"},
        {"name": "after", "type": "task", "handler": "test.value", "config": {"value": "{{ steps.review.output }}"}},
    ]})
    run = finished(start_run("strict-review", {"doc": "d"}).run.pk)
    assert run.status == "failed" and run.error["type"] == "approval_timeout"
    retry_run(run.pk, actor="test")
    # The retried step asks again: a second request with its own (again short) deadline.
    wait_until(lambda: Approval.objects.filter(run_id=run.pk).count() == 2, timeout=60,
               message="a fresh approval request")
    run = finished(run.pk)
    assert run.status == "failed" and run.error["type"] == "approval_timeout"
    assert list(Approval.objects.filter(run_id=run.pk).values_list("status", flat=True)) == ["expired", "expired"]
    assert RunEvent.objects.filter(run_id=run.pk, kind="approval_requested").count() == 2


def test_a_retried_run_reopens_an_approval_its_failure_cancelled(engine: Any, workflow: Any, alice: User) -> None:
    from runs.services import retry_run

    workflow({"name": "two-branches", "steps": [{"name": "both", "type": "parallel", "branches": {
        "person": [{"name": "review", "type": "approval", "content": "c"}],
        "machine": [{"name": "flaky", "type": "task", "handler": "test.fail_times", "config": {"times": 1}}],
    }}]})
    run = finished(start_run("two-branches", {}).run.pk)
    assert run.status == "failed"
    approval = Approval.objects.get(run_id=run.pk)
    assert approval.status == ApprovalStatus.CANCELLED
    retry_run(run.pk, actor="test")
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.PENDING
    wait_parked(run.pk)  # the other branch is done; only the parked one is open
    decide(approval.pk, user=alice, approve=True)
    run = finished(run.pk)
    assert run.status == "completed", run.error
    assert run.output["person"]["approved"] is True


def test_a_run_whose_only_open_branch_waits_on_a_person_is_waiting(engine: Any, workflow: Any, alice: User) -> None:
    workflow({"name": "branch-and-ask", "steps": [{"name": "both", "type": "parallel", "branches": {
        "person": [{"name": "review", "type": "approval", "content": "c"}],
        "machine": [{"name": "work", "type": "task", "handler": "test.value", "config": {"value": 1}}],
    }}]})
    run = start_run("branch-and-ask", {}).run
    wait_parked(run.pk)
    assert StepExecution.objects.get(run_id=run.pk, key="work").status == "completed"
    decide(pending_approval(run.pk).pk, user=alice, approve=True)
    assert finished(run.pk).status == "completed"
