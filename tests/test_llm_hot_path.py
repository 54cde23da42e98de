"""One LLM call's own cost on the record: a fixed, small number of statements (two on
PostgreSQL: the *started* row, then one durable statement for the answer, its roll-ups and
the breaker), and provider rows remembered in-process without ever sending a request on an
out-of-date copy: an edit, a disabling, a re-created row or a rotated key is seen by the
next request."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from providers import breaker, registry
from providers.chain import Scope, complete
from providers.models import BreakerState, LLMCall, Provider, ProviderHealth
from providers.registry import resolve
from providers.wire import ChatRequest
from runs.services import load_workflow, start_run
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    calls_of,
    llm_server_fixture,
    llm_server_session_fixture,
    llm_workflow,
    make_provider,
    output_of,
)

REQUEST = ChatRequest(messages=[{"role": "user", "content": "ping"}])
PRICES: dict[str, Any] = {"input_price_per_mtok": Decimal("2.5"), "output_price_per_mtok": Decimal("10")}


def parked_step() -> tuple[Any, Any]:
    """A run whose only step waits an hour: rows to charge that nothing else touches."""
    load_workflow({"name": "hot-path-parked", "steps": [{"name": "nap", "type": "wait", "seconds": 3600}]})
    run = start_run("hot-path-parked", {}).run
    return run, run.steps.get()


def ask(provider_name: str, run: Any = None, step: Any = None, round_number: int = 1) -> Any:
    scope = Scope(step_id=step.pk if step else None, run_id=run.pk if run else None, first_attempt=True,
                  budgeted=False)
    return complete(resolve({"provider": provider_name}), REQUEST, scope, round_number)


def changed_elsewhere(provider: Any, **fields: Any) -> None:
    """What another process's save does to the row, without this process's post_save signal."""
    Provider.objects.filter(pk=provider.pk).update(updated_at=timezone.now(), **fields)


def test_a_successful_llm_call_costs_a_fixed_number_of_statements(transactional_db: Any, llm_server: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # What this process remembers stays valid through the test even on a machine that stalls
    # for a second (the hot path is the call made while both are remembered).
    monkeypatch.setattr(breaker, "CLOSED_CACHE_SECONDS", 60.0)
    monkeypatch.setattr(registry, "CONFIG_CACHE_SECONDS", 60.0)
    make_provider(llm_server, "hot", **PRICES)
    llm_server.script("hot", default={"text": "ok", "usage": (1000, 100)})
    run, step = parked_step()
    ask("hot", run, step, 1)  # this process reads the provider and its breaker row once

    with CaptureQueriesContext(connection) as queries:
        answer = ask("hot", run, step, 2)
    statements = [q["sql"] for q in queries.captured_queries]

    assert answer.result.text == "ok"
    if connection.vendor == "postgresql":
        # The started row (its own asynchronous commit) and one durable statement: answer, roll-ups, breaker.
        assert len(statements) == 2, statements
        assert statements[0].startswith('INSERT INTO "providers_llmcall"')
        assert "synchronous_commit" in statements[0]
        assert statements[1].startswith("WITH answered AS (UPDATE")
        assert '"runs_run"' in statements[1] and '"steps_stepexecution"' in statements[1]
    else:
        # SQLite: the started row, then one transaction of the same writes as separate statements.
        assert len(statements) == 7, statements
    # Charged exactly once on the call, the step and the run (2 calls of 1000 + 100 tokens).
    run.refresh_from_db()
    step.refresh_from_db()
    assert (run.input_tokens, run.output_tokens, run.cost_usd) == (2000, 200, Decimal("0.007000"))
    assert (step.input_tokens, step.output_tokens, step.cost_usd) == (2000, 200, Decimal("0.007000"))
    assert list(LLMCall.objects.filter(run_id=run.pk).values_list("status", "cost_usd")) == [
        ("succeeded", Decimal("0.003500")), ("succeeded", Decimal("0.003500"))]


def test_an_answer_closes_a_circuit_whose_failures_were_counted(transactional_db: Any, llm_server: Any) -> None:
    provider = make_provider(llm_server, "mended", max_retries=0, breaker_threshold=3)
    llm_server.script("mended", {"status": 503}, default={"text": "back"})
    with pytest.raises(Exception, match="no provider answered"):
        ask("mended")
    assert ProviderHealth.objects.get(pk=provider.pk).consecutive_failures == 1

    assert ask("mended").result.text == "back"
    health = ProviderHealth.objects.get(pk=provider.pk)
    assert (health.state, health.consecutive_failures) == (BreakerState.CLOSED, 0)


def test_a_circuit_another_worker_opened_is_honoured_within_a_second(transactional_db: Any,
                                                                     llm_server: Any) -> None:
    provider = make_provider(llm_server, "shared")
    make_provider(llm_server, "spare")
    ask("shared")  # this process now takes the circuit as closed, for up to CLOSED_CACHE_SECONDS
    ProviderHealth.objects.create(provider=provider, state=BreakerState.OPEN, consecutive_failures=5,
                                  open_until=timezone.now() + timedelta(minutes=10))
    breaker._known_closed[provider.pk] = 0.0  # a second later (not slept through)

    scope = Scope(first_attempt=True, budgeted=False)
    answer = complete(resolve({"provider": "shared", "fallback": ["spare"]}), REQUEST, scope, 1)
    assert answer.provider == "spare"
    assert llm_server.count("shared") == 1


def test_an_edit_saved_by_another_process_is_used_by_the_next_request(transactional_db: Any,
                                                                      llm_server: Any) -> None:
    provider = make_provider(llm_server, "edited", **PRICES)
    ask("edited")
    changed_elsewhere(provider, model="edited-model-v2", output_price_per_mtok=Decimal("20"))

    ask("edited")
    sent = [r["body"]["model"] for r in llm_server.requests("edited")]
    assert sent == ["edited-model", "edited-model-v2"]  # never a request built from the old copy
    assert [c.model for c in LLMCall.objects.order_by("id")] == ["edited-model", "edited-model-v2"]


def test_a_provider_disabled_elsewhere_gets_no_further_request_even_without_a_new_version(
        transactional_db: Any, llm_server: Any) -> None:
    provider = make_provider(llm_server, "off")
    make_provider(llm_server, "on")
    route = resolve({"provider": "off", "fallback": ["on"]})
    scope = Scope(first_attempt=True, budgeted=False)
    assert complete(route, REQUEST, scope, 1).provider == "off"
    # Disabled by a bulk UPDATE that leaves updated_at alone: the started row's guard sees it.
    Provider.objects.filter(pk=provider.pk).update(enabled=False)

    answer = complete(route, REQUEST, scope, 2)
    assert answer.provider == "on"
    assert llm_server.count("off") == 1
    assert answer.route[0] == {"provider": "off", "outcome": "skipped", "reason": "disabled"}
    assert list(LLMCall.objects.order_by("id").values_list("provider_name", flat=True)) == ["off", "on"]

    # Enabled again: a skip is decided only on a row read in that call, so the next call asks it.
    changed_elsewhere(provider, enabled=True)
    assert complete(route, REQUEST, scope, 3).provider == "off"


def test_a_provider_deleted_and_created_again_is_followed_to_its_new_row(transactional_db: Any,
                                                                         llm_server: Any) -> None:
    old = make_provider(llm_server, "reborn")
    ask("reborn")
    Provider.objects.filter(pk=old.pk).delete()
    new = make_provider(llm_server, "reborn", model="reborn-model-v2")
    registry.remember(old)  # as another process would still have it: deleted and re-created elsewhere

    ask("reborn")
    assert LLMCall.objects.order_by("-id").values_list("provider_id", "model").first() == (new.pk, "reborn-model-v2")


def test_a_rate_limit_lowered_elsewhere_applies_to_the_next_request(transactional_db: Any,
                                                                    llm_server: Any) -> None:
    provider = make_provider(llm_server, "metered", requests_per_minute=100)
    make_provider(llm_server, "unmetered")
    ask("metered")
    changed_elsewhere(provider, requests_per_minute=1)

    scope = Scope(first_attempt=True, budgeted=False)
    answer = complete(resolve({"provider": "metered", "fallback": ["unmetered"]}), REQUEST, scope, 1)
    assert answer.provider == "unmetered"
    assert llm_server.count("metered") == 1
    assert answer.route[0]["outcome"] == "rate_limited"


def test_a_rotated_key_file_is_used_by_the_next_request(transactional_db: Any, llm_server: Any,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-first-0001")
    monkeypatch.delenv("HOT_PATH_KEY", raising=False)
    monkeypatch.setenv("HOT_PATH_KEY_FILE", str(key_file))
    make_provider(llm_server, "keyed", api_key_env="HOT_PATH_KEY")
    ask("keyed")
    key_file.write_text("sk-second-0002")

    ask("keyed")
    assert [r["headers"]["Authorization"] for r in llm_server.requests("keyed")] == [
        "Bearer sk-first-0001", "Bearer sk-second-0002"]


def test_a_worker_uses_a_provider_edit_saved_in_the_admin_at_its_next_step(engine: Any, workflow: Any,
                                                                           llm_server: Any) -> None:
    primary = make_provider(llm_server, "primary")
    make_provider(llm_server, "secondary")
    workflow(llm_workflow("hot-edit", provider="primary", fallback=["secondary"]))
    assert output_of(wait_for_run(start_run("hot-edit", {}).run.pk))["provider"] == "primary"

    primary.model = "primary-model-v2"
    primary.save()
    assert output_of(wait_for_run(start_run("hot-edit", {}).run.pk))["model"] == "primary-model-v2"

    primary.enabled = False
    primary.save()
    run = wait_for_run(start_run("hot-edit", {}).run.pk)
    assert output_of(run)["provider"] == "secondary"
    assert [r["body"]["model"] for r in llm_server.requests("primary")] == ["primary-model", "primary-model-v2"]
