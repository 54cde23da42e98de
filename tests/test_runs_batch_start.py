# mypy: disable-error-code="index"
"""Batch starts (``start_runs``: the API's ``POST /runs/batch/`` and ``manage.py start_runs``): every
item checked first, nothing half-written, idempotency per item, the same rows as one start at a time."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from approvals.models import Approval
from runs.models import Run, RunEvent, RunStatus
from runs.services import BatchItem, StartError, load_workflow, start_run, start_runs
from steps.models import StepExecution
from tests.api_support import SERVICE_PERMS, approval_first, client_for, errors_by_field, make_user
from tests.conftest import wait_for_run


def doubler(name: str = "batch-double") -> dict[str, Any]:
    return {"name": name, "input_schema": {"type": "object", "properties": {"n": {"type": "integer"}},
                                           "required": ["n"]},
            "steps": [
                {"name": "one", "type": "task", "handler": "test.value", "config": {"value": "{{ input.n }}"}},
                {"name": "two", "type": "task", "handler": "test.value", "config": {"value": "{{ steps.one.output }}"}},
            ]}


def _kinds(run_id: Any) -> list[tuple[str, str]]:
    return list(RunEvent.objects.filter(run_id=run_id).order_by("id").values_list("kind", "step_key"))


def test_a_batch_runs_every_item_to_the_end_with_the_rows_of_a_single_start(engine: Any) -> None:
    load_workflow(doubler())
    single = start_run("batch-double", {"n": -1}).run
    results = start_runs("batch-double", [BatchItem({"n": i}) for i in range(20)], actor="tester")
    assert [r.created for r in results] == [True] * 20
    for i, result in enumerate(results):
        run = wait_for_run(result.run.pk)
        assert run.status == RunStatus.COMPLETED and run.output == i and run.input == {"n": i}
        assert run.created_by == "tester"
    wait_for_run(single.pk)
    assert all(_kinds(r.run.pk) == _kinds(single.pk) for r in results)
    assert _kinds(single.pk)[:2] == [("run_started", ""), ("step_ready", "one")]


@pytest.mark.django_db
def test_one_bad_item_starts_nothing_and_is_named_by_index_and_field() -> None:
    load_workflow(doubler())
    items = [BatchItem({"n": 1}), BatchItem({"n": 2}), BatchItem({"n": "three"}), BatchItem({"x": 4})]
    with pytest.raises(StartError) as caught:
        start_runs("batch-double", items)
    paths = [path for path, _ in caught.value.errors]
    assert paths == ["items[2].input.n", "items[3].input"], caught.value.errors
    assert "nothing was started" in str(caught.value)
    assert Run.objects.count() == 0 and StepExecution.objects.count() == 0 and RunEvent.objects.count() == 0


@pytest.mark.django_db
def test_repeating_a_batch_with_idempotency_keys_returns_the_same_runs() -> None:
    load_workflow(approval_first())  # the general path: the first step parks on an approval
    items = [BatchItem({"topic": f"t{i}"}, f"key-{i}") for i in range(5)]
    first = start_runs("api-approval", [*items, BatchItem({"topic": "again"}, "key-0")])
    assert [r.created for r in first] == [True] * 5 + [False]
    assert first[5].run.pk == first[0].run.pk
    again = start_runs("api-approval", [*items, BatchItem({"topic": "new"})])
    assert [r.run.pk for r in again[:5]] == [r.run.pk for r in first[:5]]
    assert [r.created for r in again] == [False] * 5 + [True]
    assert Run.objects.count() == 6 and Approval.objects.filter(status="pending").count() == 6
    assert set(Run.objects.values_list("status", flat=True)) == {RunStatus.WAITING}
    # A key taken by a single start is honoured too.
    load_workflow(doubler())
    one = start_run("batch-double", {"n": 1}, idempotency_key="solo").run
    mixed = start_runs("batch-double", [BatchItem({"n": 2}), BatchItem({"n": 1}, "solo")])
    assert mixed[1].run.pk == one.pk and not mixed[1].created and mixed[0].created


@pytest.mark.django_db
def test_the_batch_endpoint_starts_runs_and_answers_one_result_per_item() -> None:
    load_workflow(doubler())
    api = client_for(make_user("svc", SERVICE_PERMS))
    body = {"workflow": "batch-double", "items": [{"input": {"n": 1}, "idempotency_key": "a"}, {"input": {"n": 2}}]}
    response = api.post("/api/v1/runs/batch/", body, format="json")
    assert response.status_code == 201, response.json()
    answer = response.json()
    assert answer["created"] == 2 and answer["existing"] == 0 and len(answer["runs"]) == 2
    assert Run.objects.get(pk=answer["runs"][0]["id"]).input == {"n": 1}
    again = api.post("/api/v1/runs/batch/", {"workflow": "batch-double", "items": [body["items"][0]]}, format="json")
    assert again.status_code == 200 and again.json()["runs"][0] == {**answer["runs"][0], "created": False}
    reader = client_for(make_user("reader"))
    assert reader.post("/api/v1/runs/batch/", body, format="json").status_code == 403


@pytest.mark.django_db
def test_hostile_batch_starts_get_a_clear_400_and_start_nothing() -> None:
    load_workflow(doubler())
    api = client_for(make_user("svc", SERVICE_PERMS))
    ok = {"input": {"n": 1}}
    cases: list[tuple[Any, str]] = [
        ({"workflow": "batch-double", "items": [ok, {"input": {"n": 2, "s": "a\x00b"}}]}, "items[1].input.s"),
        ({"workflow": "batch-double", "items": [ok, {"input": {"n": "x"}}]}, "items[1].input.n"),
        ({"workflow": "batch-double", "items": [ok] * 10_001}, "items"),
        ({"workflow": "batch-double", "items": []}, "items"),
        ({"workflow": "batch-double", "items": "many"}, "items"),
        ({"workflow": "batch-double", "items": {"input": {}}}, "items"),
        ({"workflow": "batch-double", "items": [ok, 7]}, "items"),
        ({"workflow": "batch-double", "items": [ok, {"input": [1]}]}, "items"),
        ({"workflow": "batch-double", "items": [ok, {"input": {"n": 1}, "idempotency_key": 5}]}, "items"),
        ({"workflow": "batch-double", "items": [ok, {"input": {"n": 1}, "idempotency_key": "k\x00"}]}, "items"),
        ({"workflow": "batch\x00double", "items": [ok]}, "workflow"),
        ({"workflow": 12, "items": [ok]}, "workflow"),
        ({"items": [ok]}, "workflow"),
        ({"workflow": "no-such-flow", "items": [ok]}, "workflow"),
    ]
    for body, field in cases:
        response = api.post("/api/v1/runs/batch/", body, format="json")
        shown = body if len(str(body)) < 300 else field
        assert response.status_code == 400, (shown, response.content[:300])
        fields = errors_by_field(response)
        assert any(f == field or f.startswith(field + ".") or f.startswith(field + "[") for f in fields), \
            (shown, fields)
    assert Run.objects.count() == 0


@pytest.mark.django_db
def test_the_start_runs_command_reads_json_lines_names_a_bad_line_and_is_idempotent_by_key_field(
        tmp_path: Path) -> None:
    load_workflow(doubler())
    good = tmp_path / "inputs.jsonl"
    good.write_text("".join(json.dumps({"n": i, "id": f"order-{i}"}) + "\n" for i in range(7)) + "\n")
    out, err = io.StringIO(), io.StringIO()
    call_command("start_runs", "batch-double", "--file", str(good), "--key-field", "id", "--batch-size", "3",
                 "--print-ids", stdout=out, stderr=err)
    ids = out.getvalue().splitlines()[:7]
    assert [str(r) for r in Run.objects.order_by("input__n").values_list("id", flat=True)] == ids
    assert "7/7 items: 7 started, 0 existing" in err.getvalue() and "3/7 items" in err.getvalue()
    call_command("start_runs", "batch-double", "--file", str(good), "--key-field", "id", stdout=out, stderr=err)
    assert "0 runs started, 7 existing" in out.getvalue() and Run.objects.count() == 7
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"n": 1}\n\n{"n": "two"}\n')
    with pytest.raises(CommandError, match=r"line 3: input.n: 'two' is not of type 'integer'"):
        call_command("start_runs", "batch-double", "--file", str(bad), stdout=out, stderr=err)
    bad.write_text('{"n": 1}\n{"n": \n')
    with pytest.raises(CommandError, match="line 2: not valid JSON"):
        call_command("start_runs", "batch-double", "--file", str(bad), stdout=out, stderr=err)
    assert Run.objects.count() == 7
