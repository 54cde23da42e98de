"""An llm step falls back along its chain: transient failures are retried, then the next
provider answers; permanent failures move on at once; when all fail, every reason is kept."""

from __future__ import annotations

from typing import Any

from providers.models import LLMCallStatus
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
from tests.support.workers import wait_until


def test_primary_failing_transiently_past_its_retries_falls_back_to_the_next(engine: Any, workflow: Any,
                                                                            llm_server: Any) -> None:
    make_provider(llm_server, "primary", max_retries=2)
    make_provider(llm_server, "secondary", kind="anthropic")
    llm_server.script("primary", default={"status": 500})
    llm_server.script("secondary", {"text": "from the fallback", "usage": (7, 3)})
    workflow(llm_workflow("fb-transient", provider="primary", fallback=["secondary"]))
    run = wait_for_run(start_run("fb-transient", {}).run.pk)

    assert run.status == "completed", run.error
    assert output_of(run)["text"] == "from the fallback"
    assert output_of(run)["provider"] == "secondary"
    assert llm_server.count("primary") == 3  # 1 + max_retries
    assert llm_server.count("secondary") == 1
    calls = calls_of(run)
    assert [(c.provider_name, c.status, c.http_status) for c in calls] == [
        ("primary", LLMCallStatus.FAILED, 500)] * 3 + [("secondary", LLMCallStatus.SUCCEEDED, 200)]
    assert all(c.error_kind == "transient" for c in calls[:3])
    route = output_of(run)["route"]
    assert route[0]["provider"] == "primary" and route[0]["outcome"] == "failed" and "HTTP 500" in route[0]["reason"]
    assert route[1] == {"provider": "secondary", "model": "secondary-model", "outcome": "answered"}


def test_429_with_retry_after_is_waited_for_and_then_answered(engine: Any, workflow: Any, llm_server: Any) -> None:
    make_provider(llm_server, "primary")
    llm_server.script("primary", {"status": 429, "headers": {"Retry-After": "0.4"}}, {"text": "after the wait"})
    workflow(llm_workflow("fb-429", provider="primary"))
    run = wait_for_run(start_run("fb-429", {}).run.pk)

    assert run.status == "completed", run.error
    assert output_of(run)["text"] == "after the wait"
    first, second = calls_of(run)
    assert first.http_status == 429 and first.error_kind == "transient"
    assert first.finished_at is not None
    # Retry-After (0.4 s) wins over the provider's 0.01 s backoff.
    assert (second.started_at - first.finished_at).total_seconds() >= 0.4


def test_a_hang_past_the_timeout_and_malformed_json_are_transient(engine: Any, workflow: Any,
                                                                 llm_server: Any) -> None:
    make_provider(llm_server, "primary", timeout_seconds=0.3, max_retries=1)
    make_provider(llm_server, "secondary")
    llm_server.script("primary", {"hang": 5}, {"raw": "{not json", "status": 200})
    llm_server.script("secondary", {"text": "fine"})
    workflow(llm_workflow("fb-hang", provider="primary", fallback=["secondary"]))
    run = wait_for_run(start_run("fb-hang", {}).run.pk)

    assert run.status == "completed", run.error
    assert output_of(run)["provider"] == "secondary"
    hang, malformed, answered = calls_of(run)
    assert hang.status == "failed" and "timeout" in hang.error and hang.error_kind == "transient"
    assert malformed.status == "failed" and "malformed response" in malformed.error
    assert answered.provider_name == "secondary"


def test_a_permanent_failure_moves_on_without_retrying(engine: Any, workflow: Any, llm_server: Any) -> None:
    make_provider(llm_server, "primary", max_retries=3)
    make_provider(llm_server, "secondary")
    llm_server.script("primary", default={"status": 401, "type": "invalid_api_key", "message": "bad key"})
    workflow(llm_workflow("fb-401", provider="primary", fallback=["secondary"]))
    run = wait_for_run(start_run("fb-401", {}).run.pk)

    assert run.status == "completed", run.error
    assert llm_server.count("primary") == 1
    first = calls_of(run)[0]
    assert first.http_status == 401 and first.error_kind == "permanent"
    assert "invalid_api_key: bad key" in first.error


def test_when_every_provider_fails_the_step_fails_with_each_ones_reason(engine: Any, workflow: Any,
                                                                        llm_server: Any) -> None:
    make_provider(llm_server, "primary", max_retries=1)
    make_provider(llm_server, "secondary", kind="anthropic")
    make_provider(llm_server, "tertiary", api_key_env="STEVORA_TEST_UNSET_KEY")
    llm_server.script("primary", default={"status": 503, "message": "overloaded"})
    llm_server.script("secondary", default={"status": 404, "type": "not_found_error", "message": "model: nope"})
    workflow(llm_workflow("fb-all", provider="primary", fallback=["secondary", "tertiary"]))
    run = wait_for_run(start_run("fb-all", {}).run.pk)

    assert run.status == "failed"
    message = error_of(run)["message"]
    assert "primary: HTTP 503: server_error: overloaded" in message
    assert "secondary: HTTP 404: not_found_error: model: nope" in message
    assert "tertiary: no key: STEVORA_TEST_UNSET_KEY is not set" in message
    details = error_of(run.steps.get(key="ask"))["details"]
    assert [(d["provider"], d["outcome"]) for d in details] == [
        ("primary", "failed"), ("secondary", "failed"), ("tertiary", "skipped")]
    assert llm_server.count("primary") == 2 and llm_server.count("secondary") == 1


def test_an_unknown_provider_fails_the_step_with_a_clear_error(engine: Any, workflow: Any) -> None:
    workflow(llm_workflow("fb-unknown", provider="nobody"))
    run = wait_for_run(start_run("fb-unknown", {}).run.pk)
    assert run.status == "failed"
    assert "no provider named 'nobody'" in error_of(run)["message"]


def test_a_step_timeout_interrupts_a_hanging_call_and_leaves_it_on_the_record(engine: Any, workflow: Any,
                                                                             llm_server: Any) -> None:
    make_provider(llm_server, "slow", timeout_seconds=30)
    llm_server.script("slow", {"hang": 20})
    workflow(llm_workflow("fb-step-timeout", provider="slow", timeout_seconds=0.5))
    run = wait_for_run(start_run("fb-step-timeout", {}).run.pk)

    assert run.status == "failed"
    assert error_of(run)["type"] == "StepTimeout"
    # The abandoned call is on the record at once (started); once the hanging read returns, the
    # StepTimeout raised into its thread lands and the record says it was interrupted.
    (call,) = calls_of(run)
    assert call.status in (LLMCallStatus.STARTED, LLMCallStatus.FAILED)
    call = wait_until(lambda: calls_of(run)[0] if calls_of(run)[0].status == LLMCallStatus.FAILED else None,
                      timeout=40, message="the interrupted call to be recorded")
    assert call.error.startswith("interrupted: StepTimeout")


def test_azure_style_deployments_take_a_path_and_an_api_key_header(db: Any, llm_server: Any,
                                                                   monkeypatch: Any) -> None:
    from providers.chain import Scope, complete
    from providers.registry import Route
    from providers.wire import ChatRequest

    monkeypatch.setenv("STEVORA_TEST_AZURE_KEY", "azure-key-123")
    azure = make_provider(llm_server, "azure", kind="openai_compatible", api_key_env="STEVORA_TEST_AZURE_KEY",
                          options={"path": "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
                                   "auth_header": "api-key"})
    llm_server.script("azure", {"text": "hello from azure"})
    answer = complete(Route([azure]), ChatRequest(messages=[{"role": "user", "content": "hi"}]), Scope(), 1)

    assert answer.result.text == "hello from azure"
    (request,) = llm_server.requests("azure")
    assert request["path"] == "/azure/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
    assert request["headers"]["api-key"] == "azure-key-123" and "Authorization" not in request["headers"]
