# mypy: disable-error-code="index"
"""An llm step's tools from MCP servers (the official SDK): the tool list is fetched when the
step starts and recorded; each call is checkpointed like a handler tool, so a finished call is
never made again after a crash — counted at a real MCP server on 127.0.0.1 (streamable HTTP)
and at a local command speaking stdio."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from approvals.models import Approval, ApprovalStatus
from approvals.services import decide
from providers.models import LLMCall, LLMCallStatus, ToolCall, ToolCallStatus
from runs.definitions import DefinitionError
from runs.models import Run, RunStatus
from runs.services import load_workflow, start_run
from steps.models import StepExecution, StepStatus
from tests.conftest import read_ledger, wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    llm_workflow,
    make_provider,
    output_of,
)
from tests.support.mcp_server import MCPServer
from tests.support.workers import wait_until


@pytest.fixture(scope="session")
def mcp_session() -> Iterator[MCPServer]:
    server = MCPServer().start()
    yield server
    server.stop()


@pytest.fixture
def mcp(mcp_session: MCPServer) -> MCPServer:
    mcp_session.reset()
    return mcp_session


def test_mcp_tools_are_listed_recorded_and_called_with_their_results_going_back_to_the_model(
        engine: Any, workflow: Any, llm_server: Any, mcp: MCPServer) -> None:
    make_provider(llm_server, "agent", kind="openai", max_retries=0)
    llm_server.script("agent",
                      {"tool_calls": [{"id": "c1", "name": "calc__add", "arguments": {"a": 2, "b": 3}},
                                      {"id": "c2", "name": "calc__fail", "arguments": {"reason": "no"}}]},
                      {"text": "2 + 3 = 5"})
    workflow(llm_workflow("mcp-basic", provider="agent",
                          mcp_servers=[{"name": "calc", "url": mcp.url, "allow": ["add", "fail"]}]))
    run = wait_for_run(start_run("mcp-basic", {}).run.pk)

    assert run.status == "completed", run.error
    assert output_of(run)["text"] == "2 + 3 = 5"
    first, second = (r["body"] for r in llm_server.requests("agent"))
    # Only the allowed tools, as <server>__<tool>, with the server's own input schema.
    tools = {t["function"]["name"]: t["function"] for t in first["tools"]}
    assert set(tools) == {"calc__add", "calc__fail"}
    assert tools["calc__add"]["description"] == "Add two integers"
    assert set(tools["calc__add"]["parameters"]["properties"]) == {"a", "b"}
    # Results (and the error result) went back to the model.
    results = {m["tool_call_id"]: m["content"] for m in second["messages"] if m["role"] == "tool"}
    assert "5" in results["c1"]
    assert results["c2"].startswith("error: ") and "refused: no" in results["c2"]
    assert (mcp.count("add"), mcp.count("fail"), mcp.count("shout")) == (1, 1, 0)
    step = run.steps.get(key="ask")
    rows = {r.call_id: r for r in ToolCall.objects.filter(step=step)}
    assert rows["c1"].handler == "mcp:calc/add" and rows["c1"].status == "completed"
    assert rows["c1"].output["structured"] and "5" in json.dumps(rows["c1"].output["structured"])
    assert rows["c2"].status == "failed" and rows["c1"].executions == 1
    # The list the step saw is on the record.
    assert [t["name"] for t in step.state["mcp_tools"]] == ["calc__add", "calc__fail"]


def test_a_worker_killed_after_an_mcp_call_resumes_without_calling_it_again(
        fresh_engine: Any, workflow: Any, llm_server: Any, mcp: MCPServer) -> None:
    env = {"STEVORA_TEST_MCP_AUTH": "Bearer mcp-secret-1"}
    make_provider(llm_server, "agent", kind="anthropic", timeout_seconds=60, max_retries=0)
    llm_server.script("agent",
                      {"tool_calls": [{"id": "t1", "name": "me__whoami", "arguments": {}}]},
                      {"hang": 120},  # round 2: the worker is SIGKILLed while it waits for this answer
                      {"text": "you are who you are"})
    workflow(llm_workflow("mcp-kill", provider="agent", mcp_servers=[
        {"name": "me", "url": mcp.url, "headers_env": {"Authorization": "STEVORA_TEST_MCP_AUTH"},
         "allow": ["whoami"]}]))
    worker = fresh_engine(**env)
    run = start_run("mcp-kill", {}).run
    wait_until(lambda: llm_server.count("agent") == 2, timeout=30, message="round 2 to reach the model")
    assert mcp.count("whoami") == 1
    worker.kill()
    llm_server.release()

    fresh_engine(**env)
    run = wait_for_run(run.pk, timeout=60)
    assert run.status == "completed", run.error
    assert mcp.count("whoami") == 1  # its recorded result was used; the server was not asked again
    assert mcp.headers == ["Bearer mcp-secret-1"]  # the header came from the named variable
    assert llm_server.count("agent") == 3
    step = run.steps.get(key="ask")
    assert list(ToolCall.objects.filter(step=step).values_list("call_id", "status", "executions")) == [
        ("t1", "completed", 1)]
    assert [(c.round, c.status) for c in LLMCall.objects.filter(step=step).order_by("id")] == [
        (1, LLMCallStatus.SUCCEEDED), (2, LLMCallStatus.ABANDONED), (2, LLMCallStatus.SUCCEEDED)]
    # The replayed round 2 was asked with the recorded tool list: the same conversation.
    second, third = (r["body"] for r in llm_server.requests("agent")[1:])
    assert second == third
    # The tool quoted the key back: it is redacted before it is stored or shown to the model.
    assert ToolCall.objects.get(step=step).output["content"] == "[redacted]"
    assert "mcp-secret-1" not in json.dumps(list(ToolCall.objects.filter(step=step).values()), default=str)
    assert "mcp-secret-1" not in json.dumps(third)


def test_a_worker_killed_during_an_mcp_call_parks_the_step_and_never_calls_again_on_its_own(
        fresh_engine: Any, workflow: Any, llm_server: Any, mcp: MCPServer, alice: Any) -> None:
    # An MCP tool's effects are unknown to the engine: irreversible unless declared. Cut off by
    # a crash mid-call, it waits for a person (the approval inbox), holding no worker.
    make_provider(llm_server, "agent", kind="openai", max_retries=0)
    llm_server.script("agent", {"tool_calls": [{"id": "s1", "name": "ops__slow", "arguments": {"seconds": 60}}]},
                      {"text": "never asked"})
    workflow(llm_workflow("mcp-cut", provider="agent", mcp_servers=[{"name": "ops", "url": mcp.url,
                                                                    "allow": ["slow"]}]))
    worker = fresh_engine()
    run = start_run("mcp-cut", {}).run
    wait_until(lambda: mcp.count("slow") == 1, timeout=30, message="the MCP call to reach the server")
    worker.kill()
    fresh_engine()
    approval = wait_until(lambda: Approval.objects.filter(run_id=run.pk, kind="tool_crash",
                                                          status=ApprovalStatus.PENDING).first(),
                          timeout=30, message="a pending tool_crash approval")
    wait_until(lambda: Run.objects.get(pk=run.pk).status == RunStatus.WAITING, timeout=30,
               message="the run to wait")
    row = ToolCall.objects.get(step__run_id=run.pk, call_id="s1")
    assert (row.handler, row.status, row.effects, row.executions) == (
        "mcp:ops/slow", ToolCallStatus.NEEDS_DECISION, "irreversible", 1)
    step = StepExecution.objects.get(run_id=run.pk, key="ask")
    assert (step.status, step.lease_owner) == (StepStatus.WAITING, "")
    assert mcp.count("slow") == 1 and llm_server.count("agent") == 1

    decide(approval.pk, user=alice, approve=False, comment="it may have gone through; a person checks")
    run = wait_for_run(run.pk, timeout=60)
    assert run.status == "failed"
    assert mcp.count("slow") == 1 and llm_server.count("agent") == 1  # never called again


def test_a_local_command_speaking_stdio_serves_tools(engine: Any, workflow: Any, llm_server: Any,
                                                   ledger: Path) -> None:
    make_provider(llm_server, "agent", kind="openai", max_retries=0)
    llm_server.script("agent", {"tool_calls": [{"id": "s1", "name": "local__shout", "arguments": {"text": "hey"}}]},
                      {"text": "shouted"})
    command = [sys.executable, "-m", "tests.support.mcp_server", "--stdio", "--ledger", str(ledger)]
    workflow(llm_workflow("mcp-stdio", provider="agent", mcp_servers=[
        {"name": "local", "command": command, "env_from": ["PYTHONPATH"], "allow": ["shout"]}]))
    run = wait_for_run(start_run("mcp-stdio", {}).run.pk)

    assert run.status == "completed", run.error
    assert read_ledger(ledger) == ["shout"]
    (row,) = ToolCall.objects.filter(step__run=run)
    assert row.output["content"] == "HEY"


def test_an_unreachable_mcp_server_fails_the_attempt_and_a_missing_header_variable_is_permanent(
        engine: Any, workflow: Any, llm_server: Any) -> None:
    make_provider(llm_server, "agent", kind="openai")
    workflow(llm_workflow("mcp-down", provider="agent",
                          mcp_servers=[{"name": "gone", "url": "http://127.0.0.1:9/mcp", "timeout_seconds": 2}]))
    workflow(llm_workflow("mcp-nokey", provider="agent", mcp_servers=[
        {"name": "keyed", "url": "http://127.0.0.1:9/mcp", "headers_env": {"Authorization": "STEVORA_TEST_UNSET"}}]))
    down = wait_for_run(start_run("mcp-down", {}).run.pk)
    nokey = wait_for_run(start_run("mcp-nokey", {}).run.pk)

    assert down.status == "failed" and "mcp server 'gone'" in down.error["message"]
    assert nokey.status == "failed"
    assert nokey.error["message"] == "mcp_servers 'keyed': headers_env Authorization: STEVORA_TEST_UNSET is not set"
    assert llm_server.count("agent") == 0  # no model turn without its tools


def test_mcp_servers_are_checked_when_the_definition_is_loaded(db: Any) -> None:
    with pytest.raises(DefinitionError) as info:
        load_workflow(llm_workflow("mcp-bad", mcp_servers=[{"name": "bad name!", "url": "ftp://x"}]))
    assert {p for p, _ in info.value.errors} == {"steps[0].mcp_servers[0].name", "steps[0].mcp_servers[0].url"}
    with pytest.raises(DefinitionError) as info:
        load_workflow(llm_workflow("mcp-bad", mcp_servers=[
            {"name": "a", "url": "http://127.0.0.1:1/mcp", "command": ["x"]},
            {"name": "a", "command": ["x"]},
        ]))
    paths = dict(info.value.errors)
    assert paths["steps[0].mcp_servers[0]"] == "give either url (streamable HTTP) or command (stdio), not both"
    assert paths["steps[0].mcp_servers[1].name"] == "server name 'a' is already used by mcp_servers[0]"
