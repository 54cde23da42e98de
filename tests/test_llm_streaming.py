"""``stream: true`` llm steps: the answer is read from each vendor's Server-Sent Events and
recorded exactly as the whole answer would have been; a stream cut in the middle fails that
attempt (retried, or the chain falls back) and nothing half-written becomes the answer; the
text goes to watchers through ``steps.live``, never into the record."""

from __future__ import annotations

from typing import Any

import pytest

from providers.models import LLMCall, LLMCallStatus, ToolCall
from runs.services import start_run
from steps import live
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    calls_of,
    llm_server_fixture,
    llm_server_session_fixture,
    llm_workflow,
    make_provider,
    output_of,
)
from tests.support.workers import wait_until

TOOLS = [{"handler": "test.tool.lookup", "name": "lookup", "description": "Look something up",
          "parameters": {"type": "object", "required": ["query"], "properties": {"query": {"type": "string"}}}}]

LONG = "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill"


def _comparable(call: LLMCall) -> tuple[Any, ...]:
    result = dict(call.result or {})
    return (result, call.input_tokens, call.output_tokens, call.cost_usd, call.status)


def _without_timing(output: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in output.items() if k != "route"}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_streamed_answer_is_recorded_equal_to_the_whole_one(kind: str, engine: Any, workflow: Any,
                                                               llm_server: Any) -> None:
    prices = dict(input_price_per_mtok=3, output_price_per_mtok=15, model="same-model")
    make_provider(llm_server, "whole", kind=kind, **prices)
    make_provider(llm_server, "streamed", kind=kind, **prices)
    script = [{"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"query": "fox facts"}}], "usage": (40, 9)},
              {"text": LONG, "usage": (61, 23)}]
    llm_server.script("whole", *script)
    llm_server.script("streamed", *script)
    workflow(llm_workflow("st-whole", provider="whole", tools=TOOLS))
    workflow(llm_workflow("st-streamed", provider="streamed", tools=TOOLS, stream=True))
    whole = wait_for_run(start_run("st-whole", {}).run.pk)
    streamed = wait_for_run(start_run("st-streamed", {}).run.pk)

    assert whole.status == streamed.status == "completed", (whole.error, streamed.error)
    sent = [r["body"] for r in llm_server.requests("streamed")]
    assert all(b["stream"] is True for b in sent)
    if kind == "openai":
        assert all(b["stream_options"] == {"include_usage": True} for b in sent)
    assert not any("stream" in r["body"] for r in llm_server.requests("whole"))
    # Text, tool calls, usage and cost: the same record.
    a, b = output_of(whole), output_of(streamed)
    assert a["text"] == b["text"] == LONG
    for key in ("tool_calls", "usage", "rounds", "model"):
        assert a[key] == b[key], key
    assert [_comparable(c) for c in calls_of(whole)] == [_comparable(c) for c in calls_of(streamed)]
    assert b["usage"]["input_tokens"] == 101 and b["usage"]["output_tokens"] == 32
    assert b["tool_calls"][0]["arguments"] == {"query": "fox facts"}
    # The streamed record holds the assembled message, in the vendor's non-streamed shape.
    final = calls_of(streamed)[-1].response
    assert (final["choices"][0]["message"]["content"] if kind == "openai" else final["content"][0]["text"]) == LONG
    # Watchers got the text in pieces; joined, the answer.
    deltas = [d for d in live.read(streamed.pk) if d["kind"] == "text"]
    assert len(deltas) >= 1
    assert "".join(d["text"] for d in deltas if d["round"] == 2) == LONG
    assert live.read(whole.pk) == []


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_stream_cut_in_the_middle_is_retried_and_the_recorded_answer_is_whole(
        kind: str, engine: Any, workflow: Any, llm_server: Any) -> None:
    make_provider(llm_server, "cut", kind=kind, max_retries=2)
    # Slow enough that some text reaches watchers before each break.
    llm_server.script("cut", {"text": LONG, "cut_after": 5, "chunk_delay": 0.03},
                      {"text": LONG, "malformed_at": 4, "chunk_delay": 0.03},
                      {"text": LONG, "usage": (20, 18)})
    workflow(llm_workflow("st-cut", provider="cut", stream=True))
    run = wait_for_run(start_run("st-cut", {}).run.pk)

    assert run.status == "completed", run.error
    assert output_of(run)["text"] == LONG
    cut, malformed, answered = calls_of(run)
    assert (cut.status, cut.error_kind) == (LLMCallStatus.FAILED, "transient")
    assert cut.result is None and cut.input_tokens == 0 and cut.cost_usd == 0
    assert "connection error" in cut.error or "the stream ended" in cut.error, cut.error
    assert malformed.status == LLMCallStatus.FAILED and "not JSON" in malformed.error
    assert answered.status == LLMCallStatus.SUCCEEDED and answered.result["text"] == LONG
    assert (run.input_tokens, run.output_tokens) == (20, 18)
    # Watchers were told to drop the text of the failed attempts.
    deltas = live.read(run.pk)
    shown = {d["call"] for d in deltas if d["kind"] == "text"}
    discarded = {d["call"] for d in deltas if d["kind"] == "discard"}
    assert {cut.pk, malformed.pk} <= shown
    assert discarded == {cut.pk, malformed.pk}
    assert "".join(d["text"] for d in deltas if d["call"] == answered.pk) == LONG


def test_a_stream_cut_with_no_retries_left_falls_back_to_the_next_provider(engine: Any, workflow: Any,
                                                                           llm_server: Any) -> None:
    make_provider(llm_server, "primary", kind="openai", max_retries=0)
    make_provider(llm_server, "secondary", kind="anthropic")
    llm_server.script("primary", {"text": "half of an answer that never ends", "cut_after": 3})
    llm_server.script("secondary", {"text": "the whole answer", "usage": (9, 3)})
    workflow(llm_workflow("st-fallback", provider="primary", fallback=["secondary"], stream=True))
    run = wait_for_run(start_run("st-fallback", {}).run.pk)

    assert run.status == "completed", run.error
    out = output_of(run)
    assert (out["text"], out["provider"]) == ("the whole answer", "secondary")
    assert out["route"][0]["outcome"] == "failed" and out["route"][0]["kind"] == "transient"
    assert [c.status for c in calls_of(run)] == [LLMCallStatus.FAILED, LLMCallStatus.SUCCEEDED]


def test_an_error_status_on_a_streamed_request_is_classified_as_usual(engine: Any, workflow: Any,
                                                                      llm_server: Any) -> None:
    make_provider(llm_server, "primary", kind="anthropic", max_retries=1)
    llm_server.script("primary", {"status": 529, "type": "overloaded_error", "message": "Overloaded"},
                      {"text": "after the overload"})
    workflow(llm_workflow("st-529", provider="primary", stream=True))
    run = wait_for_run(start_run("st-529", {}).run.pk)

    assert run.status == "completed", run.error
    first, second = calls_of(run)
    assert first.http_status == 529 and "overloaded_error: Overloaded" in first.error
    assert second.result["text"] == "after the overload"


def test_the_fake_provider_streams_its_script(engine: Any, workflow: Any) -> None:
    from providers.models import Provider

    Provider.objects.create(name="fake-st", kind="fake", model="fake-1",
                            options={"script": [{"text": LONG, "usage": {"input_tokens": 5, "output_tokens": 7}}]})
    workflow(llm_workflow("st-fake", provider="fake-st", stream=True))
    run = wait_for_run(start_run("st-fake", {}).run.pk)

    assert run.status == "completed", run.error
    assert output_of(run)["text"] == LONG
    assert "".join(d["text"] for d in live.read(run.pk)) == LONG


def test_a_worker_killed_in_the_middle_of_a_streamed_answer_runs_the_step_again_once(
        fresh_engine: Any, workflow: Any, llm_server: Any) -> None:
    make_provider(llm_server, "agent", kind="openai", timeout_seconds=60, max_retries=0)
    llm_server.script("agent",
                      {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"query": "first"}}]},
                      # round 2 streams a few pieces, then stalls: the worker is SIGKILLed there
                      {"text": LONG, "hang_at": 4, "stream_hang": 60},
                      {"text": "finished after the crash", "usage": (30, 4)})
    workflow(llm_workflow("st-kill", provider="agent", tools=TOOLS, stream=True))
    worker = fresh_engine()
    run = start_run("st-kill", {}).run
    wait_until(lambda: llm_server.count("agent") == 2 and len(live.read(run.pk)) > 0, timeout=30,
               message="round 2's stream to start reaching watchers")
    worker.kill()
    llm_server.release()

    fresh_engine()
    run = wait_for_run(run.pk, timeout=60)
    assert run.status == "completed", run.error
    assert output_of(run)["text"] == "finished after the crash"
    assert llm_server.count("agent") == 3  # round 1 was not asked again; round 2 once more
    step = run.steps.get(key="ask")
    rows = [(c.round, c.step_attempt, c.status) for c in LLMCall.objects.filter(step=step).order_by("id")]
    assert rows == [(1, 1, LLMCallStatus.SUCCEEDED), (2, 1, LLMCallStatus.ABANDONED),
                    (2, 2, LLMCallStatus.SUCCEEDED)]
    assert list(ToolCall.objects.filter(step=step).values_list("call_id", "executions")) == [("c1", 1)]
    # The half-streamed text of the killed attempt is not in the record anywhere.
    abandoned = LLMCall.objects.get(step=step, round=2, step_attempt=1)
    assert abandoned.result is None and abandoned.output_tokens == 0


def test_the_live_channel_is_bounded_and_a_watcher_reads_on_from_its_cursor(db: Any, settings: Any) -> None:
    import uuid

    settings.STEVORA = {**settings.STEVORA, "LIVE_MAX_PER_RUN": 50}
    run_id = uuid.uuid4()
    for i in range(1000):
        live.publish(run_id, step="draft", attempt=1, round=1, provider="p", text=f"w{i} ", call=1)
    kept = []
    cursor = ""
    while batch := live.read(run_id, cursor, limit=100):
        kept.extend(batch)
        cursor = batch[-1]["cursor"]
    # Trimmed as it grows (Redis: MAXLEN ~, in whole blocks; the file: every 200 rows), newest kept.
    assert 50 <= len(kept) < 400
    assert kept[-1]["text"] == "w999 "
    texts = [d["text"] for d in kept]
    assert texts == [f"w{i} " for i in range(1000 - len(kept), 1000)]
    # A watcher resumes after the piece it saw last.
    middle = kept[len(kept) // 2]
    after = live.read(run_id, middle["cursor"], limit=1000)
    assert [d["text"] for d in after] == texts[len(kept) // 2 + 1:]
