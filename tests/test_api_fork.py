# mypy: disable-error-code="index"
"""Fork: a new run keeps the results of the steps before a named step and runs from there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from runs.models import Run, RunEvent
from runs.services import fork_run, load_workflow, pause_run, start_run
from steps.models import StepExecution
from tests.api_support import SERVICE_PERMS, client_for, errors_by_field, make_user, three_steps
from tests.conftest import read_ledger, wait_for_run


@pytest.fixture
def api(db: Any) -> APIClient:
    return client_for(make_user("svc", SERVICE_PERMS))


def _ledger_keys(ledger: Path, run_id: Any) -> list[str]:
    return [line.split()[1] for line in read_ledger(ledger) if line.split()[0] == str(run_id)]


def test_a_fork_keeps_earlier_results_runs_from_the_named_step_with_changed_input(
        engine: Any, api: APIClient, ledger: Path) -> None:
    load_workflow(three_steps(ledger=str(ledger)))
    source = start_run("api-three", {"topic": "tides"}).run
    assert wait_for_run(source.pk).status == "completed"
    assert _ledger_keys(ledger, source.pk) == ["a", "b", "c"]

    response = api.post(f"/api/v1/runs/{source.pk}/fork/", {"from_step": "b", "input": {"topic": "reefs"}},
                        format="json")
    assert response.status_code == 201, response.json()
    fork_id = response.json()["id"]
    assert fork_id != str(source.pk) and response.json()["input"] == {"topic": "reefs"}
    fork = wait_for_run(fork_id)
    assert fork.status == "completed", fork.error

    # a ran once in all (for the source); b and c ran again for the fork, and only they.
    assert _ledger_keys(ledger, fork_id) == ["b", "c"]
    assert [line.split()[1] for line in read_ledger(ledger)].count("a") == 1
    steps = {s.key: s for s in StepExecution.objects.filter(run_id=fork_id)}
    source_a = StepExecution.objects.get(run_id=source.pk, key="a")
    assert steps["a"].status == "completed" and steps["a"].output == source_a.output == {
        "step": "a", "attempt": 1, "value": "a:tides"}
    assert steps["b"].output["value"] == "b:reefs" and fork.output["value"] == "c:reefs"
    forked = RunEvent.objects.get(run_id=fork_id, kind="run_forked")
    assert forked.data["source_run"] == str(source.pk) and forked.data["kept"] == ["a"]
    assert RunEvent.objects.filter(run_id=fork_id, kind="step_copied", step_key="a").exists()
    assert Run.objects.get(pk=source.pk).status == "completed"  # the source is left alone


def test_a_fork_without_input_reuses_the_source_input_and_from_the_first_step_keeps_nothing(
        engine: Any, api: APIClient, ledger: Path) -> None:
    load_workflow(three_steps(ledger=str(ledger)))
    source = start_run("api-three", {"topic": "tides"}).run
    wait_for_run(source.pk)
    fork = fork_run(source.pk, from_step="a", actor="test")
    assert wait_for_run(fork.pk).status == "completed"
    assert fork.input == {"topic": "tides"}
    assert _ledger_keys(ledger, fork.pk) == ["a", "b", "c"]
    late = fork_run(source.pk, from_step="c")
    assert wait_for_run(late.pk).status == "completed"
    assert _ledger_keys(ledger, late.pk) == ["c"]


def test_a_fork_of_a_failed_run_retries_from_a_step_with_new_input(engine: Any, api: APIClient,
                                                                  ledger: Path) -> None:
    doc = three_steps("api-fails", ledger=str(ledger))
    doc["steps"][2] = {"name": "c", "type": "condition", "if": "input.topic == 'ok'", "then": "done",
                       "else": "boom"}
    doc["steps"] += [{"name": "boom", "type": "task", "handler": "test.permanent"},
                     {"name": "done", "type": "task", "handler": "test.value", "config": {"value": "fine"}}]
    load_workflow(doc)
    source = start_run("api-fails", {"topic": "bad"}).run
    assert wait_for_run(source.pk).status == "failed"
    fork = api.post(f"/api/v1/runs/{source.pk}/fork/", {"from_step": "c", "input": {"topic": "ok"}},
                    format="json").json()
    assert wait_for_run(fork["id"]).status == "completed"
    assert _ledger_keys(ledger, fork["id"]) == []  # a and b were kept, not run again


@pytest.mark.django_db
def test_bad_forks_name_the_field_and_create_nothing(api: APIClient) -> None:
    load_workflow(three_steps())
    source = start_run("api-three", {"topic": "x"}).run  # only a was reached (no engine)
    url = f"/api/v1/runs/{source.pk}/fork/"
    moving = api.post(url, {"from_step": "a"}, format="json")
    assert moving.status_code == 409 and "only a completed, failed, cancelled or paused run" in str(moving.json())
    pause_run(source.pk, actor="test")  # a paused run can be forked
    assert "from_step" in errors_by_field(api.post(url, {}, format="json"))
    unknown = errors_by_field(api.post(url, {"from_step": "zzz"}, format="json"))
    assert "not a top-level step" in unknown["from_step"]
    unreached = errors_by_field(api.post(url, {"from_step": "c"}, format="json"))
    assert "never reached" in unreached["from_step"]
    bad_input = errors_by_field(api.post(url, {"from_step": "a", "input": {"topic": 3}}, format="json"))
    assert "input.topic" in bad_input
    assert Run.objects.count() == 1
    reader = client_for(make_user("reader"))
    assert reader.post(url, {"from_step": "a"}, format="json").status_code == 403
