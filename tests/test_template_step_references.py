# mypy: disable-error-code="index"
"""``steps.<name>`` in templates: a name that is not a step of the workflow is refused when
the definition is loaded, with its path; at run time a step that has not run (or, in a
version stored before that check, does not exist) is named in the workflow's terms."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from runs.definitions import DefinitionError
from runs.models import Workflow, Workspace
from runs.services import load_workflow, start_run
from tests.conftest import wait_for_run


def test_a_missing_step_name_is_refused_at_load_wherever_the_template_is(db: Any) -> None:
    doc = {"name": "refs", "steps": [
        {"name": "fetch", "type": "task", "handler": "noop"},
        {"name": "check", "type": "condition", "if": "steps.fetchh.output", "then": "end"},
        {"name": "split", "type": "parallel", "branches": {"left": [
            {"name": "inner", "type": "task", "handler": "echo", "config": {"v": "{{ steps['gone'].output }}"}}]}},
        {"name": "ok", "type": "task", "handler": "echo",
         "config": {"a": "{{ steps.fetch.output }}", "b": "{{ steps.inner.output }}", "c": "{{ steps.get('x') }}"}},
    ], "output": "{{ steps.nope.output }}"}
    with pytest.raises(DefinitionError) as info:
        load_workflow(doc)
    errors = dict(info.value.errors)
    assert errors["steps[1].if"] == "steps.fetchh: no step named 'fetchh' in this workflow; did you mean 'fetch'?"
    assert errors["steps[2].branches.left[0].config.v"].startswith("steps.gone: no step named 'gone'")
    assert errors["output"].startswith("steps.nope: no step named 'nope'")
    assert not any(path.startswith("steps[3]") for path in errors)  # real names and steps.get(...) pass
    assert not Workflow.objects.filter(name="refs").exists()


def test_at_run_time_a_step_that_has_not_run_is_named_in_the_workflows_terms(engine: Any, workflow: Any) -> None:
    workflow({"name": "not-yet", "steps": [
        {"name": "choose", "type": "condition", "if": "input.fast", "then": "use", "else": "slow"},
        {"name": "slow", "type": "task", "handler": "echo", "config": {"v": 1}},
        {"name": "use", "type": "task", "handler": "echo", "config": {"v": "{{ steps.slow.output.v }}"}},
    ]})
    run = wait_for_run(start_run("not-yet", {"fast": True}).run.pk)
    assert run.status == "failed"
    message = run.error["message"]
    assert "step 'slow' has no output yet" in message and "'not-yet' v1" in message
    assert "StepsView" not in json.dumps(run.error)


def test_an_old_stored_version_naming_a_missing_step_still_runs_and_fails_saying_so(
        engine: Any, transactional_db: Any) -> None:
    # Stored before load refused such names: the row is written as it was then.
    doc = {"name": "old-typo", "steps": [
        {"name": "fetch", "type": "task", "handler": "echo", "config": {"x": 1}},
        {"name": "use", "type": "task", "handler": "echo", "config": {"v": "{{ steps.aa.output.x }}"}},
    ]}
    Workflow.objects.create(workspace=Workspace.default(), name="old-typo", version=1, definition=doc,
                            content_hash=hashlib.sha256(json.dumps(doc).encode()).hexdigest())
    run = wait_for_run(start_run("old-typo", {}).run.pk)
    assert run.status == "failed"
    message = run.error["message"]
    assert "step 'aa' does not exist in workflow 'old-typo' v1 (its steps: fetch, use)" in message
    assert "StepsView" not in json.dumps(run.error)
