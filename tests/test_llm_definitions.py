"""An llm step's definition is checked when it is loaded: every problem named by its path,
nothing stored."""

from __future__ import annotations

from typing import Any

import pytest

from runs.definitions import DefinitionError
from runs.models import Workflow
from runs.services import load_workflow

USER = [{"role": "user", "content": "hi"}]


def errors_of(step: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as info:
        load_workflow({"name": "bad-llm", "steps": [{"name": "ask", "type": "llm", "messages": USER, **step}]})
    assert not Workflow.objects.filter(name="bad-llm").exists()
    return info.value.errors


def test_tools_must_name_registered_handlers_with_valid_schemas_and_unique_names(db: Any) -> None:
    errors = errors_of({"tools": [
        {"handler": "no.such.tool"},
        {"handler": "test.tool.lookup", "name": "lookup", "parameters": {"type": "nonsense"}},
        {"handler": "test.tool.add", "name": "lookup"},
    ]})
    paths = dict(errors)
    assert paths["steps[0].tools[0].handler"] == "no handler registered under 'no.such.tool'"
    assert paths["steps[0].tools[1].parameters"].startswith("not a valid JSON Schema")
    assert paths["steps[0].tools[2].name"] == "tool name 'lookup' is already used by tools[1]"


def test_guardrails_need_their_fields_and_valid_patterns(db: Any) -> None:
    paths = dict(errors_of({"guardrails": [
        {"type": "regex"},
        {"type": "regex", "pattern": "(unclosed"},
        {"type": "blocklist", "words": []},
        {"type": "handler", "handler": "missing.judge"},
    ]}))
    assert paths["steps[0].guardrails[0].pattern"] == "a regex guardrail needs pattern"
    assert paths["steps[0].guardrails[1].pattern"].startswith("not a valid regular expression")
    assert paths["steps[0].guardrails[2].words"] == "a blocklist guardrail needs words"
    assert paths["steps[0].guardrails[3].handler"] == "no handler registered under 'missing.judge'"


def test_output_schema_must_be_a_schema_and_wants_json_answers(db: Any) -> None:
    paths = dict(errors_of({"output_schema": {"type": 12}, "response_format": "text"}))
    assert paths["steps[0].output_schema"].startswith("not a valid JSON Schema")
    assert paths["steps[0].response_format"] == "an output_schema needs json answers: use json or leave it out"


def test_unknown_fields_and_bad_values_are_refused_by_the_schema(db: Any) -> None:
    paths = dict(errors_of({"temprature": 0.5, "max_tool_rounds": 0, "messages": [],
                            "tools": [{"handler": "test.tool.add", "name": "has spaces"}],
                            "guardrails": [{"type": "regex", "pattern": "x", "on_failure": "shrug"}]}))
    assert any(p == "steps[0]" and "temprature" in m for p, m in paths.items())
    assert "steps[0].max_tool_rounds" in paths
    assert "steps[0].messages" in paths
    assert "steps[0].tools[0].name" in paths
    assert "steps[0].guardrails[0].on_failure" in paths
