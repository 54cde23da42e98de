# mypy: disable-error-code="index"
"""Schedules listed, paused and resumed: the API (workspace-scoped), the command, the admin."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from runs.models import Workspace
from runs.services import load_workflow
from schedules.models import Schedule
from tests.api_support import SERVICE_PERMS, client_for, make_user, other_workspace


def hourly(name: str = "report") -> dict[str, Any]:
    return {"name": name, "steps": [{"name": "a", "type": "task", "handler": "test.value"}],
            "triggers": [{"cron": "0 * * * *", "timezone": "Europe/Paris", "catch_up": "skip"},
                         {"every_seconds": 600}]}


def test_the_api_lists_the_workspaces_schedules_and_pauses_and_resumes_one(db: Any) -> None:
    load_workflow(hourly())
    load_workflow(hourly("elsewhere"), workspace=other_workspace())
    api = client_for(make_user("ops", SERVICE_PERMS + ["change_schedule"]))
    listed = api.get("/api/v1/schedules/")
    assert listed.status_code == 200
    rows = listed.json()["results"]
    assert [(r["workflow"], r["trigger"], r["kind"], r["status"]) for r in rows] == [
        ("report", 0, "cron", "active"), ("report", 1, "every", "active")]
    assert rows[0]["timezone"] == "Europe/Paris" and rows[0]["catch_up"] == "skip" and rows[0]["next_fire_at"]
    paused = api.post(f"/api/v1/schedules/{rows[1]['id']}/pause/")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert api.post(f"/api/v1/schedules/{rows[1]['id']}/pause/").json()["status"] == "paused"  # a no-op
    resumed = api.post(f"/api/v1/schedules/{rows[1]['id']}/resume/")
    assert resumed.status_code == 200 and resumed.json()["status"] == "active"
    foreign = Schedule.objects.get(workflow_name="elsewhere", trigger_index=0)
    missing = api.post(f"/api/v1/schedules/{foreign.pk}/pause/")
    assert missing.status_code == 404 and missing.json()["type"] == "not_found"
    assert not Schedule.objects.get(pk=foreign.pk).paused


def test_pausing_a_schedule_needs_the_change_permission(db: Any) -> None:
    load_workflow(hourly())
    api = client_for(make_user("reader", SERVICE_PERMS))
    schedule = Schedule.objects.first()
    assert schedule is not None
    refused = api.post(f"/api/v1/schedules/{schedule.pk}/pause/")
    assert refused.status_code == 403 and "schedules.change_schedule" in refused.json()["detail"]
    assert not Schedule.objects.get(pk=schedule.pk).paused


def run(*args: str) -> str:
    out = StringIO()
    call_command("schedules", *args, stdout=out)
    return out.getvalue()


def test_the_schedules_command_lists_pauses_and_resumes(db: Any) -> None:
    load_workflow(hourly())
    listing = json.loads(run("--json"))
    assert [(r["workflow"], r["trigger"], r["status"]) for r in listing] == [("report", 0, "active"),
                                                                             ("report", 1, "active")]
    first = listing[0]["id"]
    assert "report" in run() and "0 * * * * (Europe/Paris)" in run()
    paused = json.loads(run("--pause", str(first), "--json"))
    assert paused["status"] == "paused" and paused["changed"] is True
    assert "already paused" in run("--pause", str(first))
    assert "resumed" in run("--resume", str(first))
    assert not Schedule.objects.get(pk=first).paused
    with pytest.raises(CommandError, match="no schedule 999999"):
        run("--pause", "999999")
    with pytest.raises(CommandError, match="--workspace: no workspace"):
        run("--workspace", "nowhere")
    assert json.loads(run("--workspace", Workspace.default().slug, "--json"))[0]["id"] == first


def test_the_admin_lists_schedules_with_their_next_fire_time_and_pauses_them(db: Any) -> None:
    load_workflow(hourly())
    admin = User.objects.create_superuser("root", password="root-pass-123")
    browser = Client()
    browser.force_login(admin)
    page = browser.get("/admin/schedules/schedule/")
    assert page.status_code == 200 and b"every 600s" in page.content and b"next fire at" in page.content.lower()
    ids = [str(pk) for pk in Schedule.objects.values_list("pk", flat=True)]
    done = browser.post("/admin/schedules/schedule/", {"action": "pause", "_selected_action": ids}, follow=True)
    assert b"Paused 2 schedule(s)" in done.content
    assert Schedule.objects.filter(paused=True).count() == 2
