"""Tokens and cost on every call, rolled up on steps and runs from the server's usage fields
and the configured prices; a run's budget stops it with a clear budget error."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from runs.services import start_run
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    calls_of,
    error_of,
    llm_server_fixture,
    llm_server_session_fixture,
    llm_workflow,
    make_provider,
    output_of,
)
from tests.test_llm_agent_loop import TOOLS

PRICES: dict[str, Any] = {"input_price_per_mtok": Decimal("2.5"), "output_price_per_mtok": Decimal("10")}
TOOL_TURN = {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"query": "x"}}], "usage": (1000, 500)}
ANSWER = {"text": "done", "usage": (1200, 300)}


def test_cost_and_tokens_on_calls_steps_and_runs_match_usage_and_prices(engine: Any, workflow: Any,
                                                                        llm_server: Any) -> None:
    make_provider(llm_server, "flaky", max_retries=0, **PRICES)
    make_provider(llm_server, "priced", kind="anthropic", **PRICES)
    llm_server.script("flaky", default={"status": 500})
    llm_server.script("priced", TOOL_TURN, ANSWER)
    workflow(llm_workflow("cost", provider="flaky", fallback=["priced"], tools=TOOLS))
    run = wait_for_run(start_run("cost", {}).run.pk)

    assert run.status == "completed", run.error
    calls = calls_of(run)
    assert [(c.provider_name, c.input_tokens, c.output_tokens, c.cost_usd) for c in calls] == [
        ("flaky", 0, 0, Decimal("0")),
        ("priced", 1000, 500, Decimal("0.007500")),   # 1000 * 2.5/1M + 500 * 10/1M
        ("flaky", 0, 0, Decimal("0")),
        ("priced", 1200, 300, Decimal("0.006000")),   # 1200 * 2.5/1M + 300 * 10/1M
    ]
    assert all(c.latency_ms is not None and c.latency_ms >= 0 for c in calls)
    step = run.steps.get(key="ask")
    assert (step.input_tokens, step.output_tokens, step.cost_usd) == (2200, 800, Decimal("0.013500"))
    assert (run.input_tokens, run.output_tokens, run.cost_usd) == (2200, 800, Decimal("0.013500"))
    assert output_of(run)["usage"] == {"input_tokens": 2200, "output_tokens": 800, "cost_usd": 0.0135,
                                       "llm_calls": 4}


def test_runs_roll_up_every_llm_step(engine: Any, workflow: Any, llm_server: Any) -> None:
    make_provider(llm_server, "priced", **PRICES)
    llm_server.script("priced", default={"text": "ok", "usage": (100, 10)})
    workflow({"name": "cost-two", "steps": [
        {"name": "one", "type": "llm", "provider": "priced", "messages": [{"role": "user", "content": "a"}]},
        {"name": "two", "type": "llm", "provider": "priced", "messages": [{"role": "user", "content": "b"}]},
    ]})
    run = wait_for_run(start_run("cost-two", {}).run.pk)
    assert (run.input_tokens, run.output_tokens, run.cost_usd) == (200, 20, Decimal("0.000700"))


def test_a_token_budget_from_the_definition_stops_the_run(engine: Any, workflow: Any, llm_server: Any) -> None:
    make_provider(llm_server, "priced", **PRICES)
    llm_server.script("priced", TOOL_TURN, ANSWER, default={"text": "never asked"})
    workflow({**llm_workflow("budget-tokens", provider="priced", tools=TOOLS), "budget": {"max_tokens": 2000}})
    run = wait_for_run(start_run("budget-tokens", {}).run.pk)

    assert run.status == "failed"
    error = error_of(run)
    assert error["type"] == "BudgetExceeded"
    assert "budget exceeded" in error["message"] and "3000 tokens used of max_tokens=2000" in error["message"]
    assert llm_server.count("priced") == 2
    assert run.input_tokens + run.output_tokens == 3000  # what was spent is on the record


def test_a_cost_budget_given_at_start_refuses_the_next_call_before_it_is_made(engine: Any, workflow: Any,
                                                                             llm_server: Any) -> None:
    make_provider(llm_server, "priced", **PRICES)
    llm_server.script("priced", default={"text": "ok", "usage": (1000, 500)})  # $0.0075 per call
    workflow({"name": "budget-cost", "steps": [
        {"name": "one", "type": "llm", "provider": "priced", "messages": [{"role": "user", "content": "a"}]},
        {"name": "two", "type": "llm", "provider": "priced", "messages": [{"role": "user", "content": "b"}]},
    ]})
    run = wait_for_run(start_run("budget-cost", {}, budget={"max_cost_usd": "0.0075"}).run.pk)

    assert run.status == "failed"
    assert error_of(run)["type"] == "BudgetExceeded"
    assert error_of(run)["step"] == "two"
    assert "the run's budget is spent" in error_of(run)["message"]
    assert llm_server.count("priced") == 1
    assert run.cost_usd == Decimal("0.007500")
