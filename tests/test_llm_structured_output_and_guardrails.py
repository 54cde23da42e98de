"""Structured output (JSON validated against output_schema, retried with the errors fed
back) and guardrails in each on_failure mode: block, warn, retry_with_feedback."""

from __future__ import annotations

from typing import Any

from runs.services import start_run
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    error_of,
    llm_server_fixture,
    llm_server_session_fixture,
    llm_workflow,
    make_provider,
    output_of,
)

SUMMARY = {"type": "object", "required": ["title", "score"], "additionalProperties": False,
           "properties": {"title": {"type": "string"}, "score": {"type": "number"}}}


def test_an_answer_that_misses_the_schema_is_retried_with_the_validation_errors(engine: Any, workflow: Any,
                                                                                llm_server: Any) -> None:
    make_provider(llm_server, "model", kind="openai")
    fenced = '```json\n{"title": "Otters", "score": 0.9}\n```'
    llm_server.script("model", {"json": {"title": "Otters"}}, {"text": fenced})
    workflow(llm_workflow("so-retry", provider="model", output_schema=SUMMARY))
    run = wait_for_run(start_run("so-retry", {}).run.pk)

    assert run.status == "completed", run.error
    assert output_of(run)["json"] == {"title": "Otters", "score": 0.9}
    first, second = (r["body"] for r in llm_server.requests("model"))
    assert first["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": SUMMARY}}
    feedback = second["messages"][-1]
    assert feedback["role"] == "user"
    assert "(root): 'score' is a required property" in feedback["content"]
    assert second["messages"][-2] == {"role": "assistant", "content": '{"title": "Otters"}'}


def test_json_mode_without_a_schema_asks_for_a_json_object(engine: Any, workflow: Any, llm_server: Any) -> None:
    make_provider(llm_server, "model", kind="openai")
    llm_server.script("model", {"json": [1, 2, 3]})
    workflow(llm_workflow("so-json", provider="model", response_format="json"))
    run = wait_for_run(start_run("so-json", {}).run.pk)
    assert output_of(run)["json"] == [1, 2, 3]
    assert llm_server.requests("model")[0]["body"]["response_format"] == {"type": "json_object"}


def test_an_answer_that_never_validates_fails_the_step_after_the_allowed_retries(engine: Any, workflow: Any,
                                                                                 llm_server: Any) -> None:
    make_provider(llm_server, "model")
    llm_server.script("model", default={"text": "I think the score is high."})
    workflow(llm_workflow("so-fail", provider="model", output_schema=SUMMARY, max_schema_retries=1))
    run = wait_for_run(start_run("so-fail", {}).run.pk)

    assert run.status == "failed"
    assert error_of(run)["type"] == "OutputSchemaError"
    assert "not valid JSON" in error_of(run)["message"]
    assert llm_server.count("model") == 2


def test_a_blocking_guardrail_fails_the_step(engine: Any, workflow: Any, llm_server: Any) -> None:
    make_provider(llm_server, "model")
    llm_server.script("model", {"text": "The launch code is Forbidden-ish: FORBIDDEN."})
    workflow(llm_workflow("gr-block", provider="model", guardrails=[
        {"type": "blocklist", "words": ["forbidden"], "on_failure": "block"}]))
    run = wait_for_run(start_run("gr-block", {}).run.pk)

    assert run.status == "failed"
    assert error_of(run)["type"] == "GuardrailBlocked"
    assert "blocked word(s): forbidden" in error_of(run)["message"]
    assert llm_server.count("model") == 1


def test_a_warning_guardrail_lets_the_answer_through_with_a_warning(engine: Any, workflow: Any,
                                                                    llm_server: Any) -> None:
    make_provider(llm_server, "model")
    llm_server.script("model", {"text": "Her number is 123-45-6789."})
    ssn = r"\d{3}-\d{2}-\d{4}"
    workflow(llm_workflow("gr-warn", provider="model", guardrails=[
        {"type": "regex", "pattern": ssn, "on_failure": "warn"}]))
    run = wait_for_run(start_run("gr-warn", {}).run.pk)

    assert run.status == "completed", run.error
    assert output_of(run)["text"] == "Her number is 123-45-6789."
    assert output_of(run)["warnings"] == [{"guardrail": 0, "type": "regex",
                                           "reason": f"the answer matches the forbidden pattern {ssn!r}"}]


def test_retry_with_feedback_asks_again_with_the_judges_reason(engine: Any, workflow: Any, llm_server: Any) -> None:
    make_provider(llm_server, "model")
    llm_server.script("model", {"text": "Sorry, I cannot help."}, {"text": "Here is the plan."})
    workflow(llm_workflow("gr-retry", provider="model", guardrails=[
        {"type": "handler", "handler": "test.guard.no_apology", "on_failure": "retry_with_feedback"},
        {"type": "regex", "pattern": "plan", "mode": "require"}]))
    run = wait_for_run(start_run("gr-retry", {}).run.pk)

    assert run.status == "completed", run.error
    assert output_of(run)["text"] == "Here is the plan."
    retry = llm_server.requests("model")[1]["body"]["messages"][-1]
    assert retry["role"] == "user" and "the answer apologises" in retry["content"]


def test_retry_with_feedback_blocks_once_its_retries_are_spent(engine: Any, workflow: Any, llm_server: Any) -> None:
    make_provider(llm_server, "model")
    llm_server.script("model", default={"text": "Sorry again."})
    workflow(llm_workflow("gr-spent", provider="model", guardrails=[
        {"type": "handler", "handler": "test.guard.no_apology", "on_failure": "retry_with_feedback",
         "max_retries": 1}]))
    run = wait_for_run(start_run("gr-spent", {}).run.pk)

    assert run.status == "failed"
    assert error_of(run)["type"] == "GuardrailBlocked"
    assert llm_server.count("model") == 2


def test_anthropic_gets_the_schema_in_its_system_prompt_and_the_answer_is_validated_here(
        engine: Any, workflow: Any, llm_server: Any) -> None:
    make_provider(llm_server, "claude", kind="anthropic")
    llm_server.script("claude", {"json": {"title": "Bees", "score": "high"}}, {"json": {"title": "Bees", "score": 1}})
    workflow(llm_workflow("so-anthropic", provider="claude", system="Summarise.", output_schema=SUMMARY))
    run = wait_for_run(start_run("so-anthropic", {}).run.pk)

    assert output_of(run)["json"] == {"title": "Bees", "score": 1}
    first, second = (r["body"] for r in llm_server.requests("claude"))
    assert "response_format" not in first
    assert first["system"].startswith("Summarise.\n\nAnswer with one JSON value only")
    assert '"required": ["title", "score"]' in first["system"]
    assert second["messages"][-1]["content"][0]["text"].startswith(
        "Your answer was rejected: score: 'high' is not of type 'number'")
