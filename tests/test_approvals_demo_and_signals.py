# mypy: disable-error-code="index"
"""The approval demo tells a newcomer how to decide, and a request fires ``approval_requested``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.core.management import call_command

from approvals.models import Approval
from approvals.services import decide
from approvals.signals import approval_requested
from runs.services import load_workflow_text, start_run
from steps.models import StepExecution
from tests.approval_support import finished, pending_approval

DEMO = Path(__file__).resolve().parents[1] / "examples" / "approval-demo.yaml"


def test_the_demo_says_how_to_approve_and_finishes_after_a_rejection_and_an_approval(
        engine: Any, alice: User, capsys: Any) -> None:
    load_workflow_text(DEMO.read_text(), source=str(DEMO))
    run = start_run("approval-demo", {"topic": "otters"}).run
    first = pending_approval(run.pk)
    hint = StepExecution.objects.get(run_id=run.pk, key="draft").output["how_to_approve"]
    assert f"python manage.py approve {run.pk}" in hint and "/admin/approvals/approval/" in hint
    call_command("approve", str(first.pk), "--reject", "--comment", "needs more otters")
    second = pending_approval(run.pk, "review-again")
    assert second.content["body"].endswith("Revised after: needs more otters")
    decide(second.pk, user=alice, approve=True, comment="better")
    run = finished(run.pk)
    assert run.status == "completed", run.error
    assert run.output["published"] is True and run.output["decided_by"] == "alice"
    assert run.output["post"]["title"] == "Five facts about otters (revised)"


def test_a_request_sends_approval_requested_after_commit_with_the_webhook(
        db: Any, workflow: Any, django_capture_on_commit_callbacks: Any) -> None:
    workflow({"name": "hooked", "steps": [
        {"name": "ok", "type": "approval", "content": "x", "webhook": "https://hooks.example/{{ input.team }}"}]})
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        received.append(kwargs)

    approval_requested.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            run = start_run("hooked", {"team": "ops"}).run
            assert received == []  # nothing before commit
        for callback in callbacks:
            callback()
    finally:
        approval_requested.disconnect(receiver)
    approval = Approval.objects.get(run_id=run.pk)
    assert [(r["approval_id"], r["webhook_url"]) for r in received] == [(approval.pk, "https://hooks.example/ops")]
