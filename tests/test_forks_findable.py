# mypy: disable-error-code="index"
"""Forks can be made from the command line and the admin, and found both ways: the fork names
its source and the source lists its forks, in the API, ``show_run`` and the admin run page, and
the source's history records each fork. A run still moving is refused."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from runs.models import Run, RunEvent
from runs.services import load_workflow, start_run
from tests.api_support import SERVICE_PERMS, client_for, make_user, three_steps
from tests.conftest import read_ledger, wait_for_run


def _ledger_keys(ledger: Path, run_id: Any) -> list[str]:
    return [line.split()[1] for line in read_ledger(ledger) if line.split()[0] == str(run_id)]


def test_fork_run_command_forks_and_both_runs_name_each_other_everywhere(
        engine: Any, transactional_db: Any, ledger: Path) -> None:
    load_workflow(three_steps("fork-cli", ledger=str(ledger)))
    source = wait_for_run(start_run("fork-cli", {"topic": "tides"}).run.pk)
    assert source.status == "completed"

    out, err = StringIO(), StringIO()
    call_command("fork_run", str(source.pk), "--from-step", "b", "--input", '{"topic": "reefs"}', "--as", "ops",
                 stdout=out, stderr=err)
    fork_id = out.getvalue().strip().splitlines()[-1]
    fork = wait_for_run(fork_id)
    assert fork.status == "completed" and fork.output["value"] == "c:reefs"
    assert _ledger_keys(ledger, fork_id) == ["b", "c"]  # a was kept, not run again
    assert (str(fork.forked_from_id), fork.forked_from_step) == (str(source.pk), "b")

    # The source's history names the fork (and who made it).
    note = RunEvent.objects.get(run_id=source.pk, kind="fork_created")
    assert note.data == {"fork": fork_id, "from_step": "b"} and note.actor == "ops" and fork_id in note.message

    # API: forked_from on the fork, forks on the source.
    api = client_for(make_user("svc", SERVICE_PERMS))
    body = api.get(f"/api/v1/runs/{fork_id}/").json()
    assert (body["forked_from"], body["forked_from_step"], body["forks"]) == (str(source.pk), "b", [])
    body = api.get(f"/api/v1/runs/{source.pk}/").json()
    assert body["forked_from"] is None and [(f["id"], f["from_step"], f["status"]) for f in body["forks"]] == [
        (fork_id, "b", "completed")]
    listed = {r["id"]: r for r in api.get("/api/v1/runs/?workflow=fork-cli").json()["results"]}
    assert listed[fork_id]["forked_from"] == str(source.pk)

    # show_run: the drawn header and --json, both ways.
    drawn = StringIO()
    call_command("show_run", str(source.pk), stdout=drawn)
    assert f"fork {fork_id} from step b [completed]" in drawn.getvalue()
    drawn = StringIO()
    call_command("show_run", fork_id, stdout=drawn)
    assert f"forked from run {source.pk} at step b" in drawn.getvalue()
    as_json = StringIO()
    call_command("show_run", str(source.pk), "--json", stdout=as_json)
    data = json.loads(as_json.getvalue())
    assert data["forks"] == [{"id": fork_id, "from_step": "b", "status": "completed"}]
    as_json = StringIO()
    call_command("show_run", fork_id, "--json", stdout=as_json)
    data = json.loads(as_json.getvalue())
    assert (data["forked_from"], data["forked_from_step"]) == (str(source.pk), "b")

    # The admin run pages link to each other.
    admin = Client()
    admin.force_login(make_superuser())
    page = admin.get(reverse("admin:runs_run_change", args=[source.pk])).content.decode()
    assert reverse("admin:runs_run_change", args=[fork_id]) in page and 'id="forks"' in page
    page = admin.get(reverse("admin:runs_run_change", args=[fork_id])).content.decode()
    assert reverse("admin:runs_run_change", args=[source.pk]) in page and 'id="forked-from"' in page


def make_superuser() -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_superuser("root", password="root-pass-123")


def test_fork_run_refuses_a_moving_run_an_unknown_step_and_bad_input(transactional_db: Any) -> None:
    load_workflow(three_steps("fork-bad"))
    moving = start_run("fork-bad", {"topic": "x"}).run  # no engine: it stays running
    with pytest.raises(CommandError, match="is running; only a completed, failed, cancelled or paused run"):
        call_command("fork_run", str(moving.pk), "--from-step", "a")
    call_command("pause_run", str(moving.pk))
    with pytest.raises(CommandError, match="'zzz' is not a top-level step"):
        call_command("fork_run", str(moving.pk), "--from-step", "zzz")
    with pytest.raises(CommandError, match="--input is not valid JSON"):
        call_command("fork_run", str(moving.pk), "--from-step", "a", "--input", "{topic")
    with pytest.raises(CommandError, match="input.topic"):
        call_command("fork_run", str(moving.pk), "--from-step", "a", "--input", '{"topic": 3}')
    with pytest.raises(CommandError, match="no run with id 'nope'"):
        call_command("fork_run", "nope", "--from-step", "a")
    assert Run.objects.count() == 1
    out = StringIO()
    call_command("fork_run", str(moving.pk), "--from-step", "a", stdout=out)  # paused: allowed
    assert Run.objects.get(pk=out.getvalue().strip()).forked_from_id == moving.pk


def test_the_admin_forks_from_the_run_page_and_the_list_action(
        engine: Any, transactional_db: Any, ledger: Path) -> None:
    load_workflow(three_steps("fork-admin", ledger=str(ledger)))
    source = wait_for_run(start_run("fork-admin", {"topic": "tides"}).run.pk)
    other = wait_for_run(start_run("fork-admin", {"topic": "delta"}).run.pk)
    admin = Client()
    admin.force_login(make_superuser())
    page = admin.get(reverse("admin:runs_run_change", args=[source.pk])).content.decode()
    fork_url = reverse("admin:runs_run_fork", args=[source.pk])
    assert f'href="{fork_url}"' in page

    # The list action needs exactly one run, then opens its fork page.
    changelist = reverse("admin:runs_run_changelist")
    two = admin.post(changelist, {"action": "fork_runs", "_selected_action": [source.pk, other.pk]}, follow=True)
    assert "Select exactly one run to fork (0 runs forked)." in two.content.decode()
    one = admin.post(changelist, {"action": "fork_runs", "_selected_action": [source.pk]})
    assert one.status_code == 302 and one["Location"] == fork_url
    form = admin.get(fork_url).content.decode()
    assert '<option value="b">' in form and '<option value="c">' in form

    bad = admin.post(fork_url, {"from_step": "b", "input": "{topic"})
    assert bad.status_code == 400 and "input is not valid JSON" in bad.content.decode()
    done = admin.post(fork_url, {"from_step": "c", "input": '{"topic": "reefs <b>"}'})
    assert done.status_code == 302
    fork = Run.objects.get(forked_from_id=source.pk)
    assert done["Location"] == reverse("admin:runs_run_change", args=[fork.pk])
    assert wait_for_run(fork.pk).output["value"] == "c:reefs <b>"
    assert RunEvent.objects.get(run_id=source.pk, kind="fork_created").actor == "admin:root"

    # Without the permission to start runs: no button, no action, 403.
    viewer = make_user("viewer", ["view_run"])
    viewer.is_staff = True
    viewer.save()
    client = Client()
    client.force_login(viewer)
    assert 'id="fork-link"' not in client.get(reverse("admin:runs_run_change", args=[source.pk])).content.decode()
    assert "fork_runs" not in client.get(changelist).content.decode()
    assert client.post(fork_url, {"from_step": "c"}).status_code == 403
