"""``show_run`` draws an agent's work under the timeline: each model turn with provider, model,
tokens and cost, each tool call with its arguments and result, the failed attempts and the
fallback; long texts are shortened at a word boundary with an ellipsis."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from django.core.management import call_command

from providers.models import LLMCall
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
