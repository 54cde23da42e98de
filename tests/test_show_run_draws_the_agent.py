"""``show_run`` draws an agent's work under the timeline: each model turn with provider, model,
tokens and cost, each tool call with its arguments and result, the failed attempts and the
fallback; long texts are shortened at a word boundary with an ellipsis."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from django.core.management import call_command

from providers.models import LLMCall
from providers.services import load_config, parse_config_text
from runs.cli import shorten
from runs.services import load_workflow_text, start_run
from tests.conftest import wait_for_run
from tests.support.workers import ROOT

NO_KEYS = {name: "" for name in ("OPENAI_API_KEY", "OPENAI_API_KEY_FILE", "ANTHROPIC_API_KEY",
                                 "ANTHROPIC_API_KEY_FILE")}


def test_show_run_names_each_turn_tool_call_and_the_fallback_of_the_agent_demo(fresh_engine: Any) -> None:
    call_command("load_providers", str(ROOT / "providers" / "demo-providers.yaml"), stdout=io.StringIO())
    load_workflow_text(Path(ROOT / "examples" / "agent-research.yaml").read_text())
    fresh_engine(**NO_KEYS)
    run = wait_for_run(start_run("agent-research", {"topic": "otters"}).run.pk, timeout=60)
    assert run.status == "completed", run.error

    out = io.StringIO()
    call_command("show_run", str(run.pk), stdout=out)
    text = out.getvalue()
    draft = text[text.index("\n  draft  llm"):text.index("\n  summary  llm")]

    # The tool calls with their arguments and results, under the turn that asked for them.
    assert '⚙ search_notes(query="otters tools fur")' in draft
    assert '→ {"query": "otters tools fur", "snippets": ["Sea otters' in draft
    assert "⚙ word_count(text=" in draft and '→ {"words": 18}' in draft
    assert draft.index("turn 1") < draft.index("search_notes(") < draft.index("turn 2") < draft.index("word_count(")
    # The flaky provider's failed attempt and the fallback, then the answer with its tokens and cost.
    assert "✘ demo-flaky (flaky-1) failed: HTTP 503: overloaded (scripted) (transient)" in draft
    assert "→ fell back to demo-fake" in draft
    answer = LLMCall.objects.get(step__run=run, step__key="draft", round=3, status="succeeded")
    assert (f"turn 3  ✔ demo-fake (scripted-1) · {answer.input_tokens} in + {answer.output_tokens} out tokens · "
            f"${answer.cost_usd:.6f}") in draft
    # The providers the chain skipped, and the step's totals.
    assert "openai (no key: OPENAI_API_KEY is not set)" in draft
    calls = LLMCall.objects.filter(step__run=run, step__key="draft")
    assert (f"draft  llm · 3 model turns · 2 tool calls · {sum(c.input_tokens for c in calls)} in + "
            f"{sum(c.output_tokens for c in calls)} out tokens") in draft
    # The run's output is shortened at a word boundary, with an ellipsis.
    output_line = next(line for line in text.splitlines() if line.startswith("output: "))
    assert output_line.endswith("…") and len(output_line) <= len("output: ") + 500
    assert output_line[-2] != " "


def test_shorten_cuts_at_a_word_boundary_with_an_ellipsis() -> None:
    assert shorten("short text", 20) == "short text"
    assert shorten("one two  three\nfour", 50) == "one two three four"
    assert shorten("alpha beta gamma delta", 14) == "alpha beta…"
    assert shorten("x" * 30, 10) == "x" * 9 + "…"


def test_show_run_draws_failed_attempts_the_retry_and_the_steps_error_when_every_provider_fails(
        fresh_engine: Any, workflow: Any) -> None:
    load_config(parse_config_text("""
providers:
  - name: down-a
    kind: fake
    model: flaky-1
    max_retries: 1
    backoff_seconds: 0
    options: {script: [{error: {status: 503, message: "overloaded (scripted)"}}]}
  - name: down-b
    kind: fake
    model: broken-2
    max_retries: 0
    options: {script: [{error: {status: 400, message: "bad request (scripted)"}}]}
chains:
  both-down: [down-a, down-b]
"""))
    workflow({"name": "all-down", "steps": [
        {"name": "ask", "type": "llm", "chain": "both-down", "retry": {"max_attempts": 1},
         "messages": [{"role": "user", "content": "Hello"}]}]})
    fresh_engine(**NO_KEYS)
    run = wait_for_run(start_run("all-down", {}).run.pk, timeout=60)
    assert run.status == "failed"

    out = io.StringIO()
    call_command("show_run", str(run.pk), stdout=out)
    ask = out.getvalue()[out.getvalue().index("\n  ask  llm"):]
    assert "ask  llm · 1 model turn · 0 tool calls · 0 in + 0 out tokens · $0.000000" in ask
    assert "turn 1  ✘ down-a (flaky-1) failed: HTTP 503: overloaded (scripted) (transient)" in ask
    assert "→ retried on down-a" in ask
    assert "✘ down-a (flaky-1) try 2 failed: HTTP 503" in ask and "→ fell back to down-b" in ask
    assert "✘ down-b (broken-2) failed: HTTP 400: bad request (scripted) (permanent)" in ask
    step_error = (run.steps.get(key="ask").error or {})["message"]
    assert f"  ✘ {shorten(step_error, 90)}" in ask, ask
