"""The agent loop of an llm step: tools are called with schema-valid arguments, their results
go back to the model in each vendor's format, and a worker killed mid-loop resumes without
paying for finished model turns or running finished tool calls again."""

from __future__ import annotations

import json
from typing import Any

from providers.models import LLMCall, LLMCallStatus, ToolCall
from runs.services import retry_run, start_run
from tests.conftest import read_ledger, wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    calls_of,
    error_of,
    llm_server_fixture,
    llm_server_session_fixture,
    llm_workflow,
    make_provider,
    output_of,
)
from tests.support.workers import wait_until

LOOKUP_SCHEMA = {"type": "object", "required": ["query"], "additionalProperties": False,
                 "properties": {"query": {"type": "string"}}}
TOOLS = [{"handler": "test.tool.lookup", "name": "lookup", "description": "Look facts up",
          "parameters": LOOKUP_SCHEMA}]


def test_tools_get_schema_valid_arguments_and_their_results_go_back_in_openai_format(
        engine: Any, workflow: Any, llm_server: Any, ledger: Any) -> None:
    make_provider(llm_server, "agent", kind="openai", max_retries=0)
    llm_server.script(
        "agent",
        {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"query": "otters"}}]},
        {"tool_calls": [{"id": "c2", "name": "lookup", "arguments": {"query": 5}}]},
        {"tool_calls": [{"id": "c3", "name": "lookup", "arguments": "{broken"}]},
        {"text": "Otters hold hands while sleeping."},
    )
    workflow(llm_workflow("agent-openai", provider="agent", system="You are careful.", tools=TOOLS))
    run = wait_for_run(start_run("agent-openai", {"ledger": str(ledger)}).run.pk)

    assert run.status == "completed", run.error
    assert output_of(run)["text"] == "Otters hold hands while sleeping."
    assert read_ledger(ledger) == [f'lookup {{"query": "otters"}} {run.pk}:ask:tool:1:c1']
    assert [(t["id"], t["status"]) for t in output_of(run)["tool_calls"]] == [
        ("c1", "completed"), ("c2", "failed"), ("c3", "failed")]
    first, second, third, fourth = (r["body"] for r in llm_server.requests("agent"))
    assert first["tools"] == [{"type": "function", "function": {
        "name": "lookup", "description": "Look facts up", "parameters": LOOKUP_SCHEMA}}]
    assert first["messages"][0] == {"role": "system", "content": "You are careful."}
    assert second["messages"][-2]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"query": "otters"}'}}]
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "c1",
                                      "content": json.dumps({"found": "facts about otters"})}
    assert third["messages"][-1]["tool_call_id"] == "c2"
    assert third["messages"][-1]["content"].startswith("error: invalid arguments: query: 5 is not of type 'string'")
    assert fourth["messages"][-1]["content"].startswith("error: arguments are not valid JSON")
    assert output_of(run)["rounds"] == 4


def test_tool_results_go_back_as_anthropic_tool_result_blocks(engine: Any, workflow: Any, llm_server: Any,
                                                             ledger: Any) -> None:
    make_provider(llm_server, "claude", kind="anthropic", api_key_env="STEVORA_TEST_NO_SUCH_KEY_VAR",
                  max_retries=0)
    # No key variable set: the provider is skipped. Point a second, key-less row at the same server.
    make_provider(llm_server, "claude2", kind="anthropic", base_url=llm_server.url("claude"), max_retries=0)
    llm_server.script(
        "claude",
        {"tool_calls": [{"id": "toolu_1", "name": "lookup", "arguments": {"query": "bees"}}], "text": "Let me look."},
        {"text": "Bees dance."},
    )
    workflow(llm_workflow("agent-anthropic", provider="claude", fallback=["claude2"], system="Be brief.",
                          tools=TOOLS, max_tokens=300, temperature=0.2))
    run = wait_for_run(start_run("agent-anthropic", {"ledger": str(ledger)}).run.pk)

    assert run.status == "completed", run.error
    assert output_of(run)["provider"] == "claude2"
    first, second = llm_server.requests("claude")
    assert first["path"] == "/claude/v1/messages"
    assert first["headers"]["anthropic-version"] == "2023-06-01"
    body = first["body"]
    assert body["system"] == "Be brief." and body["max_tokens"] == 300 and body["temperature"] == 0.2
    assert body["tools"] == [{"name": "lookup", "description": "Look facts up", "input_schema": LOOKUP_SCHEMA}]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}]
    assistant, results = second["body"]["messages"][-2:]
    assert assistant == {"role": "assistant", "content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"query": "bees"}}]}
    assert results == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": json.dumps({"found": "facts about bees"})}]}


def test_a_model_that_keeps_asking_for_tools_is_stopped_at_max_tool_rounds(engine: Any, workflow: Any,
                                                                           llm_server: Any) -> None:
    make_provider(llm_server, "agent", max_retries=0)
    llm_server.script("agent", default={"tool_calls": [{"id": "again", "name": "lookup",
                                                        "arguments": {"query": "more"}}]})
    workflow(llm_workflow("agent-rounds", provider="agent", tools=TOOLS, max_tool_rounds=2))
    run = wait_for_run(start_run("agent-rounds", {}).run.pk)

    assert run.status == "failed"
    assert "max_tool_rounds=2" in error_of(run)["message"]
    assert llm_server.count("agent") == 3


def test_a_worker_killed_mid_loop_resumes_without_repeating_finished_llm_calls_or_tool_calls(
        fresh_engine: Any, workflow: Any, llm_server: Any, ledger: Any) -> None:
    make_provider(llm_server, "agent", timeout_seconds=60, max_retries=0)
    llm_server.script(
        "agent",
        {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"query": "first"}}]},
        {"tool_calls": [{"id": "c2", "name": "lookup", "arguments": {"query": "second"}}]},
        {"hang": 120},  # round 3: the worker is SIGKILLed while it waits for this answer
        {"text": "finished after the crash"},
    )
    workflow(llm_workflow("agent-kill", provider="agent", tools=TOOLS))
    worker = fresh_engine()
    run = start_run("agent-kill", {"ledger": str(ledger)}).run
    wait_until(lambda: llm_server.count("agent") == 3, timeout=30, message="round 3 to reach the server")
    assert len(read_ledger(ledger)) == 2
    worker.kill()
    llm_server.release()

    fresh_engine()
    run = wait_for_run(run.pk, timeout=60)
    assert run.status == "completed", run.error
    assert output_of(run)["text"] == "finished after the crash"
    # Counted at the server: rounds 1-2 were not asked again, round 3 was asked once more.
    assert llm_server.count("agent") == 4
    # Counted in the ledger: each tool call ran once.
    assert len(read_ledger(ledger)) == 2
    step = run.steps.get(key="ask")
    assert step.attempt == 2 and step.recovery_count == 1
    rows = [(c.round, c.step_attempt, c.status) for c in LLMCall.objects.filter(step=step).order_by("id")]
    assert rows == [(1, 1, LLMCallStatus.SUCCEEDED), (2, 1, LLMCallStatus.SUCCEEDED),
                    (3, 1, LLMCallStatus.ABANDONED), (3, 2, LLMCallStatus.SUCCEEDED)]
    assert list(ToolCall.objects.filter(step=step).values_list("call_id", "executions")) == [("c1", 1), ("c2", 1)]
    # Rounds 1-2 were paid for once: three answers (10 + 5 tokens each) were charged, not five.
    assert (step.input_tokens, step.output_tokens) == (30, 15)


def test_a_tool_call_whose_worker_died_during_the_tool_runs_again_with_the_same_key(
        fresh_engine: Any, workflow: Any, llm_server: Any, ledger: Any) -> None:
    make_provider(llm_server, "agent", max_retries=0)
    llm_server.script(
        "agent",
        {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"query": "slow"}}]},
        {"text": "done"},
    )
    # A lookup declared idempotent: cut off by a crash, it runs again (an irreversible one would park).
    workflow(llm_workflow("agent-kill-tool", provider="agent", tools=[{**TOOLS[0], "effects": "idempotent"}]))
    worker = fresh_engine()
    run = start_run("agent-kill-tool", {"ledger": str(ledger), "tool_sleep": 3}).run
    wait_until(lambda: ToolCall.objects.filter(call_id="c1", executions=1).exists(), timeout=30,
               message="the tool to start")
    worker.kill()  # during the tool's 3 s sleep: it never wrote its ledger line

    fresh_engine()
    run = wait_for_run(run.pk, timeout=60)
    assert run.status == "completed", run.error
    # At least once: the unfinished tool ran again, under the same idempotency key; the
    # model's first turn, answered before the crash, was not asked again.
    assert read_ledger(ledger) == [f'lookup {{"query": "slow"}} {run.pk}:ask:tool:1:c1']
    assert ToolCall.objects.get(call_id="c1").executions == 2
    assert llm_server.count("agent") == 2


def test_a_retried_run_resumes_its_llm_step_after_the_last_answered_round(engine: Any, workflow: Any,
                                                                          llm_server: Any, ledger: Any) -> None:
    make_provider(llm_server, "agent", max_retries=0)
    llm_server.script(
        "agent",
        {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"query": "once"}}]},
        {"status": 400, "message": "context too long"},
        {"text": "answered on retry"},
    )
    workflow(llm_workflow("agent-retry", provider="agent", tools=TOOLS))
    run = wait_for_run(start_run("agent-retry", {"ledger": str(ledger)}).run.pk)
    assert run.status == "failed"

    retry_run(run.pk, actor="test")
    run = wait_for_run(run.pk)
    assert run.status == "completed", run.error
    assert output_of(run)["text"] == "answered on retry"
    assert llm_server.count("agent") == 3  # round 1 was replayed, not asked again
    assert len(read_ledger(ledger)) == 1
    assert output_of(run)["route"] == [{"provider": "agent", "model": "agent-model", "outcome": "answered"}]


def test_a_replay_that_would_answer_a_different_conversation_fails_instead_of_guessing(
        engine: Any, workflow: Any, llm_server: Any) -> None:
    make_provider(llm_server, "agent", max_retries=0)
    llm_server.script("agent", {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"query": "x"}}]},
                      {"status": 400})
    workflow(llm_workflow("agent-diverge", provider="agent", tools=TOOLS))
    run = wait_for_run(start_run("agent-diverge", {}).run.pk)
    assert run.status == "failed"
    # As if round 1 had been asked with another conversation than the one a retry rebuilds.
    LLMCall.objects.filter(run=run, round=1, status="succeeded").update(request_digest="0" * 64)

    retry_run(run.pk, actor="test")
    run = wait_for_run(run.pk)
    assert run.status == "failed"
    assert error_of(run)["type"] == "ReplayDiverged"
    assert llm_server.count("agent") == 2
