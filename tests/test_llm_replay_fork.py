"""What-if replays: a fork with ``replay: recorded`` answers model turns and tool calls from
its source run's record while they ask what the source asked — no request to the model
server, no tool entered, nothing charged — and goes live at the first one that differs,
and for everything after it. Counts at the server and in the tool's ledger prove it."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO
from typing import Any

from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from providers.models import LLMCall, ToolCall
from runs.models import Run, RunEvent
from runs.services import fork_run, load_workflow, start_run
from tests.api_support import SERVICE_PERMS, client_for, errors_by_field, make_user
from tests.conftest import read_ledger, wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    make_provider,
    output_of,
)
from tests.support.workers import wait_until

CHARGE = {"handler": "test.tool.charge", "name": "charge",
          "parameters": {"type": "object", "required": ["amount"], "properties": {"amount": {"type": "integer"}}}}
CALL = {"tool_calls": [{"id": "c1", "name": "charge", "arguments": {"amount": 5}}]}


def agent_flow(name: str) -> dict[str, Any]:
    return {"name": name, "steps": [
        {"name": "prep", "type": "task", "handler": "test.value", "config": {"value": {"topic": "{{ input.topic }}"}}},
        {"name": "ask", "type": "llm", "provider": "agent", "tools": [CHARGE],
         "messages": [{"role": "user", "content": "Charge for {{ steps.prep.output.topic }}"}]},
    ]}


def source_run(workflow: Any, llm_server: Any, ledger: Any, name: str, *answers: dict[str, Any],
               **provider: Any) -> Run:
    make_provider(llm_server, "agent", max_retries=0, input_price_per_mtok=Decimal(1),
                  output_price_per_mtok=Decimal(2), **provider)
    workflow(agent_flow(name))
    llm_server.script("agent", *answers)
    return wait_for_run(start_run(name, {"topic": "otters", "ledger": str(ledger)}).run.pk)


def ask(run: Run) -> dict[str, Any]:
    return output_of(run.steps.get(key="ask"))


def test_a_replayed_fork_that_asks_the_same_pays_nothing_and_runs_no_tool(
        engine: Any, workflow: Any, llm_server: Any, ledger: Any) -> None:
    a = source_run(workflow, llm_server, ledger, "replay-same", CALL, {"text": "charged"})
    assert a.status == "completed", a.error
    assert llm_server.count("agent") == 2 and len(read_ledger(ledger)) == 2  # enter + done

    out = StringIO()
    call_command("fork_run", str(a.pk), "--from-step", "ask", "--replay", "recorded", stdout=out, stderr=StringIO())
    b = wait_for_run(out.getvalue().split()[-1])
    assert b.status == "completed", b.error
    assert b.replay == "recorded"
    assert ask(b)["text"] == "charged"
    # Counted at the server and in the ledger: nothing was asked, nothing was charged again.
    assert llm_server.count("agent") == 2 and len(read_ledger(ledger)) == 2
    assert ask(b)["replay"] == {
        "model_turns": {"replayed": 2, "live": 0}, "tool_calls": {"replayed": 1, "live": 0},
        "saved": {"input_tokens": 20, "output_tokens": 10, "cost_usd": 0.00004}, "went_live": None}
    rows = list(LLMCall.objects.filter(run_id=b.pk))
    assert len(rows) == 2 and all(r.replayed_from_id is not None and r.cost_usd == 0 for r in rows)
    tool = ToolCall.objects.get(step__run_id=b.pk)
    assert (tool.executions, tool.output, tool.replayed_from_id is not None) == (0, {"charged": 5}, True)
    assert ask(b)["tool_calls"][0]["replayed"] is True
    assert Run.objects.get(pk=b.pk).cost_usd == 0 and Run.objects.get(pk=a.pk).cost_usd == Decimal("0.00004")
    drawn = StringIO()
    call_command("show_run", str(b.pk), stdout=drawn)
    assert "↺ agent (agent-model) · replayed from the source run's record (not asked, not charged)" in drawn.getvalue()
    assert "⚙ charge(amount=5) (replayed from the source run's record)" in drawn.getvalue()
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", password="root-pass-123"))
    page = admin.get(reverse("admin:runs_run_change", args=[b.pk])).content.decode()
    assert page.count("replayed from the source run (not asked, not charged)") == 2
    assert "tool-replayed" in page


def test_a_replayed_fork_goes_live_at_the_first_turn_the_source_never_answered(
        engine: Any, workflow: Any, llm_server: Any, ledger: Any) -> None:
    a = source_run(workflow, llm_server, ledger, "replay-part", CALL, {"status": 400, "message": "bad request"})
    assert a.status == "failed"
    assert llm_server.count("agent") == 2 and len(read_ledger(ledger)) == 2

    llm_server.script("agent", {"text": "charged after all"})
    b = wait_for_run(fork_run(a.pk, from_step="ask", replay="recorded").pk)
    assert b.status == "completed", b.error
    assert llm_server.count("agent") == 3  # round 1 from the record; round 2 asked live, once
    assert len(read_ledger(ledger)) == 2  # the tool call of round 1 came from the record
    report = ask(b)["replay"]
    assert report["model_turns"] == {"replayed": 1, "live": 1} and report["tool_calls"] == {"replayed": 1, "live": 0}
    assert report["went_live"] == {"round": 2, "reason": "the source run has no answer for this round"}
    assert RunEvent.objects.filter(run_id=b.pk, kind="replay_went_live", step_key="ask").count() == 1


def test_a_fork_whose_input_changed_the_question_runs_everything_live(
        engine: Any, workflow: Any, llm_server: Any, ledger: Any) -> None:
    a = source_run(workflow, llm_server, ledger, "replay-changed", CALL, {"text": "charged"})
    llm_server.script("agent", CALL, {"text": "charged for bees"})
    b = wait_for_run(fork_run(a.pk, from_step="prep", run_input={"topic": "bees", "ledger": str(ledger)},
                              replay="recorded").pk)
    assert b.status == "completed", b.error
    assert llm_server.count("agent") == 4
    assert [line.split()[0] for line in read_ledger(ledger)] == ["enter", "done", "enter", "done"]
    report = ask(b)["replay"]
    assert report["model_turns"] == {"replayed": 0, "live": 2} and report["tool_calls"] == {"replayed": 0, "live": 1}
    assert report["went_live"] == {"round": 1, "reason": "the request differs from the source run's"}


def test_a_worker_killed_in_the_live_part_of_a_replayed_fork_resumes_without_asking_replayed_turns(
        fresh_engine: Any, workflow: Any, llm_server: Any, ledger: Any) -> None:
    worker = fresh_engine()
    a = source_run(workflow, llm_server, ledger, "replay-kill", CALL, {"status": 400}, timeout_seconds=60)
    assert a.status == "failed"
    llm_server.script("agent", {"hang": 120}, {"text": "done after the crash"})
    b = fork_run(a.pk, from_step="ask", replay="recorded")
    wait_until(lambda: llm_server.count("agent") == 3, timeout=30, message="the live round to reach the server")
    worker.kill()
    llm_server.release()

    fresh_engine()
    b = wait_for_run(b.pk, timeout=60)
    assert b.status == "completed", b.error
    # Round 1 came from the record twice (no request); round 2 was asked once per attempt.
    assert llm_server.count("agent") == 4
    assert len(read_ledger(ledger)) == 2
    assert ask(b)["replay"]["model_turns"] == {"replayed": 1, "live": 1}


def test_the_api_forks_with_replay_and_refuses_an_unknown_mode(db: Any) -> None:
    load_workflow({"name": "free", "steps": [{"name": "a", "type": "task", "handler": "test.value"}]})
    api = client_for(make_user("svc", SERVICE_PERMS))
    run = start_run("free", {}).run
    Run.objects.filter(pk=run.pk).update(status="completed")
    bad = api.post(f"/api/v1/runs/{run.pk}/fork/", {"from_step": "a", "replay": "sometimes"}, format="json")
    assert bad.status_code == 400 and "replay" in errors_by_field(bad)
    good = api.post(f"/api/v1/runs/{run.pk}/fork/", {"from_step": "a", "replay": "recorded"}, format="json")
    assert good.status_code == 201, good.content
    assert good.json()["replay"] == "recorded"
