"""The agent demo (examples/agent-research.yaml) runs offline on the scripted fake provider:
research, a draft that calls tools, and a schema-validated summary, with the flaky provider
falling back and every call on the record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management import call_command

from providers.models import LLMCall
from runs.services import load_workflow_text, start_run
from tests.conftest import wait_for_run
from tests.support.llm_server import output_of
from tests.support.workers import ROOT

NO_KEYS = {name: "" for name in ("OPENAI_API_KEY", "OPENAI_API_KEY_FILE", "ANTHROPIC_API_KEY",
                                 "ANTHROPIC_API_KEY_FILE")}


def test_the_agent_demo_runs_offline_on_the_fake_provider(fresh_engine: Any) -> None:
    call_command("load_providers", str(ROOT / "providers" / "demo-providers.yaml"))
    load_workflow_text(Path(ROOT / "examples" / "agent-research.yaml").read_text())
    fresh_engine(**NO_KEYS)
    run = wait_for_run(start_run("agent-research", {"topic": "otters"}).run.pk, timeout=60)

    assert run.status == "completed", run.error
    output = output_of(run)
    assert output["answered_by"] == {"research": "demo-fake", "draft": "demo-fake", "summary": "demo-fake"}
    assert output["summary"]["confidence"] == 0.8 and len(output["summary"]["bullets"]) == 3
    draft = output_of(run.steps.get(key="draft"))
    assert [t["name"] for t in draft["tool_calls"]] == ["search_notes", "word_count"]
    assert draft["tool_calls"][0]["output"]["snippets"][0].startswith("Sea otters")
    route = draft["route"]
    assert [(r["provider"], r["outcome"]) for r in route][:2] == [("openai", "skipped"), ("anthropic", "skipped")]
    summary = output_of(run.steps.get(key="summary"))
    assert summary["rounds"] == 2  # the first JSON missed the schema and was sent back
    assert run.cost_usd > 0 and run.cost_usd == sum(c.cost_usd for c in LLMCall.objects.filter(run=run))
