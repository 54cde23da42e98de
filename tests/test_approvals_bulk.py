# mypy: disable-error-code="index"
"""Bulk decisions (``decide_many``: API, admin action, ``approve`` with several ids or a filter) go
through the same checks and write the same rows as single decisions; the pending list pages in SQL."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.test import Client

from approvals.models import Approval, ApprovalStatus
from approvals.services import MAX_BULK, decide, decide_many
from runs.models import Run, RunEvent, RunStatus
from runs.services import load_workflow, start_run
from steps.models import StepExecution
from tests.api_support import approval_first, client_for, errors_by_field, make_user
from tests.approval_support import finished


def _park(n: int, name: str = "api-approval", **approval: Any) -> list[Approval]:
    load_workflow(approval_first(name, **approval))
    runs = [start_run(name, {"topic": f"t{i}"}).run.pk for i in range(n)]
    return list(Approval.objects.filter(run_id__in=runs).order_by("id"))


def _history(run_id: Any) -> list[tuple[str, str, str]]:
    return [(kind, key, actor) for kind, key, actor in
            RunEvent.objects.filter(run_id=run_id).order_by("id").values_list("kind", "step_key", "actor")]


def _snapshot(run_ids: list[Any]) -> Any:
    return (sorted(Approval.objects.filter(run_id__in=run_ids).values_list("id", "status", "decided_by_name")),
            sorted(Run.objects.filter(pk__in=run_ids).values_list("id", "status")),
            RunEvent.objects.filter(run_id__in=run_ids).count(),
            StepExecution.objects.filter(run_id__in=run_ids).count())


def test_bulk_approval_resumes_every_run_with_the_same_history_as_a_single_decision(
        engine: Any, alice: User) -> None:
    approvals = _park(6)
    single, bulk = approvals[0], approvals[1:]
    decide(single.pk, user=alice, approve=True, comment="ok")
    results = decide_many([a.pk for a in bulk], user=alice, approve=True, comment="ok")
    assert [(r.id, r.outcome, r.status) for r in results] == [(a.pk, "decided", "approved") for a in bulk]
    for approval in approvals:
        assert finished(approval.run_id).status == RunStatus.COMPLETED
    reference = _history(single.run_id)
    assert ("approval_approved", "review", "alice") in reference
    for approval in bulk:
        assert _history(approval.run_id) == reference
        row = Approval.objects.get(pk=approval.pk)
        assert (row.status, row.decided_by_name, row.comment) == ("approved", "alice", "ok")
        output = StepExecution.objects.get(run_id=approval.run_id, key="review").output
        assert output["approved"] is True and output["decided_by"] == "alice" and output["content"] == approval.content


def test_bulk_rejection_through_the_api_resumes_the_runs(engine: Any, alice: User) -> None:
    approvals = _park(3)
    response = client_for(alice).post("/api/v1/approvals/decide/", {"workflow": "api-approval", "approve": False,
                                                                      "comment": "no"}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["decided"] == 3 and body["refused"] == 0
    assert [r["id"] for r in body["results"]] == [a.pk for a in approvals]
    for approval in approvals:
        run = finished(approval.run_id)
        assert run.status == RunStatus.COMPLETED  # approval_first goes on after a rejection too
        assert Approval.objects.get(pk=approval.pk).status == ApprovalStatus.REJECTED


@pytest.mark.django_db
def test_without_permission_or_outside_the_group_each_id_is_refused_with_a_reason_and_nothing_changes(
        alice: User, bob: User) -> None:
    open_ones = _park(2)
    restricted = _park(2, "for-legal", approvers={"groups": ["legal"]})
    run_ids = [a.run_id for a in open_ones + restricted]
    before = _snapshot(run_ids)
    refused = decide_many([a.pk for a in open_ones], user=bob, approve=True)
    assert [r.outcome for r in refused] == ["refused", "refused"]
    assert all("lacks the permission" in r.reason for r in refused)
    outside = decide_many([a.pk for a in restricted], user=alice, approve=True)
    assert [r.outcome for r in outside] == ["refused", "refused"]
    assert all("not among the approvers" in r.reason and "legal" in r.reason for r in outside)
    assert _snapshot(run_ids) == before
    # Over the API: the same refusals, one per id; an unknown id is refused as not found.
    body = client_for(alice).post("/api/v1/approvals/decide/", {
        "ids": [restricted[0].pk, 999_999], "approve": True}, format="json").json()
    assert body["decided"] == 0 and [r["outcome"] for r in body["results"]] == ["refused", "refused"]
    assert "no approval with id 999999" in body["results"][1]["reason"]
    assert _snapshot(run_ids) == before
    # In the group: decided; already decided: refused with who decided it.
    alice.groups.add(Group.objects.get_or_create(name="legal")[0])
    alice = User.objects.get(pk=alice.pk)
    again = decide_many([restricted[0].pk, restricted[0].pk, restricted[1].pk], user=alice, approve=False)
    assert [r.outcome for r in again] == ["decided", "decided", "decided"]
    late = decide_many([restricted[0].pk], user=alice, approve=True)
    assert late[0].outcome == "refused" and "already rejected by alice" in late[0].reason


@pytest.mark.django_db
def test_the_admin_actions_decide_the_selected_approvals_with_the_same_checks(alice: User, bob: User) -> None:
    approvals = _park(3)
    web = Client()
    web.force_login(bob)
    page = web.get("/admin/approvals/approval/")
    assert page.status_code == 200 and b"approve_selected" not in page.content  # bob may not decide
    refused = web.post("/admin/approvals/approval/", {"action": "approve_selected",
                                                      "_selected_action": [a.pk for a in approvals]})
    assert refused.status_code in (200, 302)
    assert Approval.objects.filter(status=ApprovalStatus.PENDING).count() == 3
    web.force_login(alice)
    assert b"Approve selected" in web.get("/admin/approvals/approval/").content
    done = web.post("/admin/approvals/approval/", {"action": "reject_selected",
                                                   "_selected_action": [a.pk for a in approvals[:2]]}, follow=True)
    assert b"Rejected 2 approvals" in done.content
    assert sorted(Approval.objects.values_list("status", flat=True)) == ["pending", "rejected", "rejected"]


@pytest.mark.django_db
def test_the_approve_command_decides_several_ids_a_workflow_or_everything_pending(alice: User) -> None:
    first = _park(3)
    other = _park(2, "other-flow")
    out = io.StringIO()
    call_command("approve", str(first[0].pk), str(first[1].pk), stdout=out)
    assert "2 approved, 0 refused" in out.getvalue()
    call_command("approve", "--workflow", "other-flow", "--reject", stdout=out)
    assert {a.status for a in Approval.objects.filter(pk__in=[a.pk for a in other])} == {"rejected"}
    call_command("approve", "--all-pending", "--comment", "sweep", stdout=out)
    assert Approval.objects.get(pk=first[2].pk).comment == "sweep"
    assert not Approval.objects.filter(status=ApprovalStatus.PENDING).exists()
    with pytest.raises(CommandError, match="refused"):
        call_command("approve", str(first[0].pk), str(first[1].pk), stdout=out, stderr=io.StringIO())
    with pytest.raises(CommandError, match="not both"):
        call_command("approve", "1", "--all-pending")


@pytest.mark.django_db
def test_pagination_returns_every_pending_approval_exactly_once(alice: User) -> None:
    approvals = _park(11)
    restricted = _park(2, "for-legal", approvers={"groups": ["legal"]})
    api = client_for(alice)
    seen: list[int] = []
    url: str | None = "/api/v1/approvals/?page_size=3"
    while url:
        body = api.get(url).json()
        seen += [row["id"] for row in body["results"]]
        url = body["next"]
    assert seen == [a.pk for a in approvals]  # oldest first; not the ones alice may not decide
    # The command pages the same way, by keyset (--after the last id shown).
    shown: list[int] = []
    after: list[str] = []
    while True:
        out = io.StringIO()
        call_command("pending_approvals", "--json", "--limit", "4", *after, stdout=out)
        page = [row["id"] for row in json.loads(out.getvalue())]
        if not page:
            break
        shown += page
        after = ["--after", str(page[-1])]
    assert shown == [a.pk for a in approvals + restricted]


@pytest.mark.django_db
def test_hostile_bulk_decisions_get_a_clear_400(alice: User) -> None:
    approvals = _park(1)
    api = client_for(alice)
    url = "/api/v1/approvals/decide/"
    ok_id = approvals[0].pk
    cases: list[tuple[Any, str]] = [
        ({"ids": [ok_id], "approve": True, "comment": "bad\x00comment"}, "comment"),
        ({"ids": list(range(1, MAX_BULK + 2)), "approve": True}, "ids"),
        ({"ids": ["1"], "approve": True}, "ids"),
        ({"ids": [True], "approve": True}, "ids"),
        ({"ids": [1.5], "approve": True}, "ids"),
        ({"ids": [-3], "approve": True}, "ids"),
        ({"ids": [2**70], "approve": True}, "ids"),
        ({"ids": "1,2", "approve": True}, "ids"),
        ({"ids": [], "approve": True}, "ids"),
        ({"ids": [ok_id], "approve": "yes"}, "approve"),
        ({"ids": [ok_id]}, "approve"),
        ({"approve": True}, "ids"),
        ({"ids": [ok_id], "workflow": "api-approval", "approve": True}, "ids"),
        ({"workflow": "x\x00y", "approve": True}, "workflow"),
        ({"all_pending": "true", "approve": True}, "all_pending"),
    ]
    for body, field in cases:
        response = api.post(url, body, format="json")
        assert response.status_code == 400, (body if len(str(body)) < 200 else field, response.content[:300])
        fields = errors_by_field(response)
        assert any(f.split(".")[0].split("[")[0] == field for f in fields), (field, fields)
    assert api.post(url, b"[1, 2]", content_type="application/json").status_code == 400
    assert Approval.objects.get(pk=ok_id).status == ApprovalStatus.PENDING
    reader = client_for(make_user("reader", ["view_approval"]))
    refused = reader.post(url, {"ids": [ok_id], "approve": True}, format="json").json()
    assert refused["refused"] == 1 and "lacks the permission" in refused["results"][0]["reason"]
    assert Approval.objects.get(pk=ok_id).status == ApprovalStatus.PENDING
