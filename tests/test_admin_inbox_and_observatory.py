# mypy: disable-error-code="index,type-var"
"""The admin as approval inbox and run observatory, through Django's test client."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from approvals.models import Approval, ApprovalStatus
from runs.models import Run, RunEvent
from runs.services import start_run
from tests.approval_support import finished, pending_approval, review_workflow


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_inbox_lists_pending_approvals_first_and_hides_decided_ones(
        engine: Any, workflow: Any, alice: User) -> None:
    workflow(review_workflow())
    waiting = start_run("review-flow", {"topic": "harbour"}).run
    decided = start_run("review-flow", {"topic": "lighthouse"}).run
    keep = pending_approval(waiting.pk)
    done = pending_approval(decided.pk)
    from approvals.services import decide

    decide(done.pk, user=alice, approve=True)
    page = client_for(alice).get(reverse("admin:approvals_approval_changelist"))
    assert page.status_code == 200
    html = page.content.decode()
    assert f"/admin/approvals/approval/{keep.pk}/change/" in html
    assert f"/admin/approvals/approval/{done.pk}/change/" not in html
    assert "Check the draft for harbour" in html and str(waiting.pk)[:8] in html
    everything = client_for(alice).get(reverse("admin:approvals_approval_changelist") + "?status=all")
    assert f"/admin/approvals/approval/{done.pk}/change/" in everything.content.decode()


def test_a_reviewer_sees_buttons_and_approves_with_a_comment_and_edit(
        engine: Any, workflow: Any, alice: User) -> None:
    workflow(review_workflow(allow_edit=True))
    run = start_run("review-flow", {"topic": "pier"}).run
    approval = pending_approval(run.pk)
    client = client_for(alice)
    page = client.get(reverse("admin:approvals_approval_change", args=[approval.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert 'id="approve-button"' in html and 'id="reject-button"' in html and 'name="content"' in html
    assert "&quot;text&quot;: &quot;pier&quot;" in html  # pretty JSON of the content
    response = client.post(reverse("admin:approvals_approval_decide", args=[approval.pk]),
                           {"decision": "approve", "comment": "fine by me", "content": '{"text": "pier (edited)"}'})
    assert response.status_code == 302
    run = finished(run.pk)
    assert run.status == "completed" and run.output["published"] == {"text": "pier (edited)"}
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.APPROVED and approval.comment == "fine by me"
    assert approval.decided_by == alice
    # The run page draws the approval step's panel (registered by the approvals app).
    run_page = client.get(reverse("admin:runs_run_change", args=[run.pk])).content.decode()
    link = reverse("admin:approvals_approval_change", args=[approval.pk])
    assert f'<a href="{link}">#{approval.pk}</a> — approved by' in run_page


def test_a_user_without_the_permission_sees_no_buttons_and_gets_403_on_post(
        engine: Any, workflow: Any, bob: User) -> None:
    workflow(review_workflow())
    run = start_run("review-flow", {"topic": "buoy"}).run
    approval = pending_approval(run.pk)
    client = client_for(bob)
    page = client.get(reverse("admin:approvals_approval_change", args=[approval.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "approve-button" not in html and "reject-button" not in html
    assert "lacks the permission" in html
    response = client.post(reverse("admin:approvals_approval_decide", args=[approval.pk]),
                           {"decision": "approve", "comment": "let me"})
    assert response.status_code == 403
    # The decide link (as sent in webhook notices) opens the review page.
    link = client.get(reverse("admin:approvals_approval_decide", args=[approval.pk]))
    assert link.status_code == 302 and link["Location"].endswith(f"/approval/{approval.pk}/change/")
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.PENDING
    assert not RunEvent.objects.filter(run_id=run.pk, kind="approval_approved").exists()


def test_the_run_page_draws_a_timeline_with_attempts_errors_and_history(
        engine: Any, workflow: Any, alice: User) -> None:
    workflow({"name": "bumpy", "steps": [
        {"name": "flaky", "type": "task", "handler": "test.fail_times", "config": {"times": 1},
         "retry": {"max_attempts": 3, "backoff_seconds": 0.1, "jitter": False}},
        {"name": "nap", "type": "wait", "seconds": 0.2},
        {"name": "boom", "type": "task", "handler": "test.permanent", "config": {"message": "cannot work"}},
    ]})
    run = finished(start_run("bumpy", {}).run.pk)
    assert run.status == "failed"
    page = client_for(alice).get(reverse("admin:runs_run_change", args=[run.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    for key in ("flaky", "nap", "boom"):
        assert f'data-step="{key}"' in html
    assert 'class="bar running"' in html and 'class="bar waiting"' in html and 'class="bar failed"' in html
    assert "transient failure on attempt 1" in html  # the first attempt's error in the attempts table
    assert "cannot work" in html and "Traceback" in html
    assert "step_retry_scheduled" in html and "run_failed" in html
    assert 'value="Retry"' not in html  # alice may view runs but not change them


def test_the_run_list_filters_searches_and_acts_through_the_services(
        engine: Any, workflow: Any, alice: User) -> None:
    admin_user = User.objects.create_superuser("root", password="root-pass-123")
    workflow(review_workflow())
    runs = [start_run("review-flow", {"topic": f"t{i}"}, idempotency_key=f"key-{i}").run for i in range(3)]
    for run in runs:
        pending_approval(run.pk)
    client = client_for(admin_user)
    url = reverse("admin:runs_run_changelist")
    listing = client.get(url, {"status": "waiting", "workflow": "review-flow"})
    assert listing.status_code == 200 and str(runs[0].pk)[:8] in listing.content.decode()
    found = client.get(url, {"q": "key-1"}).content.decode()
    assert str(runs[1].pk)[:8] in found and str(runs[0].pk)[:8] not in found
    assert str(runs[2].pk)[:8] in client.get(url, {"q": str(runs[2].pk)}).content.decode()
    response = client.post(url, {"action": "cancel_runs", "_selected_action": [str(r.pk) for r in runs[:2]]},
                           follow=True)
    assert "2 runs cancelled." in response.content.decode()
    assert {Run.objects.get(pk=r.pk).status for r in runs[:2]} == {"cancelled"}
    assert Approval.objects.filter(run_id__in=[r.pk for r in runs[:2]], status="cancelled").count() == 2
    again = client.post(url, {"action": "cancel_runs", "_selected_action": [str(runs[0].pk), str(runs[2].pk)]},
                        follow=True).content.decode()
    assert "1 run cancelled." in again and "1 run not cancelled" in again
    page = client.post(reverse("admin:runs_run_control", args=[runs[2].pk, "retry"]), follow=True)
    assert "0 runs retried" in page.content.decode()


def test_a_steps_llm_calls_appear_with_tokens_and_cost(engine: Any, workflow: Any, alice: User) -> None:
    from runs.admin_timeline import llm_call_model

    model = llm_call_model()
    if model is None:
        import pytest

        pytest.skip("providers.LLMCall is not installed")
    from steps.models import StepExecution

    workflow({"name": "one-step", "steps": [{"name": "only", "type": "task", "handler": "test.value",
                                             "config": {"value": 1}}]})
    run = finished(start_run("one-step", {}).run.pk)
    step = StepExecution.objects.get(run_id=run.pk, key="only")
    model.objects.create(step=step, run=run, provider_name="fake-provider", kind="chat", model="tiny-model",
                         status="succeeded", input_tokens=1234, output_tokens=56, cost_usd="0.004200",
                         latency_ms=87.4)
    html = client_for(alice).get(reverse("admin:runs_run_change", args=[run.pk])).content.decode()
    assert "llm-calls" in html and "tiny-model" in html and "1234 / 56" in html and "$0.004200" in html


def test_a_huge_run_page_shows_the_first_steps_and_says_how_many_it_left_out(
        engine: Any, workflow: Any, alice: User, monkeypatch: Any) -> None:
    from runs import admin_timeline

    monkeypatch.setattr(admin_timeline, "MAX_STEPS", 2)
    monkeypatch.setattr(admin_timeline, "MAX_EVENTS", 3)
    workflow({"name": "three", "steps": [
        {"name": f"s{i}", "type": "task", "handler": "test.value", "config": {"value": i}} for i in range(3)]})
    run = finished(start_run("three", {}).run.pk)
    html = client_for(alice).get(reverse("admin:runs_run_change", args=[run.pk])).content.decode()
    assert 'data-step="s1"' in html and 'data-step="s2"' not in html
    assert "Showing the first 2 of 3 steps" in html and "Showing the first 3 of" in html
