# mypy: disable-error-code="index"
"""An llm step reads as a transcript on the admin run page (turns in order, tool calls with
their arguments and results, provider, tokens, cost and latency per turn, failed attempts and
fallbacks marked, every value escaped); the same calls are in ``show_run --json`` and the API
with how often each tool ran. LLM calls, tool calls and history are audit records: read-only,
deletable only by a superuser. The timeline axis speaks one unit."""

from __future__ import annotations

import json
import re
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from providers.models import LLMCall, ToolCall
from runs.admin_timeline import axis_ticks
from runs.models import RunEvent
from runs.services import start_run
from steps.models import StepExecution
from tests.api_support import SERVICE_PERMS, client_for, make_user
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    llm_workflow,
    make_provider,
    output_of,
)

LOOKUP_SCHEMA = {"type": "object", "required": ["query"], "additionalProperties": False,
                 "properties": {"query": {"type": "string"}}}
TOOLS = [{"handler": "test.tool.lookup", "name": "lookup", "description": "Look facts up",
          "parameters": LOOKUP_SCHEMA}]
ANSWER_SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}


def agent_run(workflow: Any, llm_server: Any) -> Any:
    """Round 1: primary fails (HTTP 500), secondary answers with a tool call; round 2: primary's
    answer is not JSON and is rejected; round 3: primary answers."""
    make_provider(llm_server, "primary", kind="openai", max_retries=0)
    make_provider(llm_server, "secondary", kind="anthropic", input_price_per_mtok=1000)
    llm_server.script("primary", {"status": 500, "message": "upstream <overloaded>"},
                      {"text": "not json at all", "usage": (40, 4)},
                      {"json": {"answer": "<b>otters</b> hold hands"}, "usage": (50, 9)})
    llm_server.script("secondary", {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"query": "<otters>"}}],
                                    "usage": (30, 7)})
    workflow(llm_workflow("transcribed", provider="primary", fallback=["secondary"], system="You are careful.",
                          tools=TOOLS, output_schema=ANSWER_SCHEMA))
    run = wait_for_run(start_run("transcribed", {"question": "Do otters <hold> hands?"}).run.pk)
    assert run.status == "completed", run.error
    assert output_of(run)["json"] == {"answer": "<b>otters</b> hold hands"}
    return run


def transcript_of(html: str) -> str:
    start = html.index('<div class="transcript"')
    return html[start:html.index('<details class="raw">', start)]


def test_an_llm_step_reads_as_a_transcript_with_every_value_escaped(engine: Any, workflow: Any,
                                                                     llm_server: Any) -> None:
    run = agent_run(workflow, llm_server)
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="root-pass-123"))
    html = client.get(reverse("admin:runs_run_change", args=[run.pk])).content.decode()
    part = transcript_of(html)

    roles = re.findall(r'class="turn turn-[a-z-]+[^"]*" data-role="([a-z]+)"(?: data-round="(\d+)")?', part)
    assert roles == [("system", ""), ("user", ""), ("assistant", "1"), ("assistant", "2"), ("feedback", "3"),
                     ("assistant", "3")]
    assert "You are careful." in part and "Do otters &lt;hold&gt; hands?" in part
    turns = part.split('data-role="assistant"')
    first, second, third = turns[1], turns[2], turns[3]
    # Round 1: primary failed and is marked; secondary answered as a fallback, with its numbers.
    assert 'class="flag failed">failed</span> primary · primary-model' in first and "HTTP 500" in first
    assert "upstream &lt;overloaded&gt;" in first
    assert "fallback: answered by secondary after primary" in first
    assert "secondary · secondary-model" in first and "30 in / 7 out" in first and "$0.030000" in first
    assert re.search(r'class="meta latency">\d+ ms<', first)
    # Its tool call, with arguments and result, and how often the handler ran.
    assert 'data-tool="lookup"' in first and "ran 1×" in first and "id c1" in first
    assert "&quot;query&quot;: &quot;&lt;otters&gt;&quot;" in first
    assert "facts about &lt;otters&gt;" in first
    # Round 2's answer, then the message the step added because it was not JSON.
    assert "not json at all" in second and "40 in / 4 out" in second and "fallback" not in second
    feedback = second.split('data-role="feedback"')[1]
    assert "Your answer was rejected" in feedback
    assert "&lt;b&gt;otters&lt;/b&gt; hold hands" in third and "50 in / 9 out" in third
    # Nothing the model or the tool said became markup.
    assert "<otters>" not in part and "<b>otters" not in part and "<overloaded>" not in part
    # The step's own admin page shows the same transcript.
    step = StepExecution.objects.get(run_id=run.pk, key="ask")
    step_page = client.get(reverse("admin:steps_stepexecution_change", args=[step.pk])).content.decode()
    assert step_page[step_page.index('<div class="transcript"'):].count('data-role="') == 6
    assert "facts about &lt;otters&gt;" in step_page and "<otters>" not in step_page
    # The axis under the timeline uses one unit.
    labels = re.findall(r'<span style="left: \d+%">([^<]+)</span>', html)
    assert len(labels) == 5 and len({re.sub(r"[\d.]", "", label) for label in labels}) == 1


def test_show_run_json_and_the_api_carry_llm_calls_and_tool_calls_with_executions(
        engine: Any, workflow: Any, llm_server: Any) -> None:
    run = agent_run(workflow, llm_server)
    out = StringIO()
    call_command("show_run", str(run.pk), "--json", stdout=out)
    step = json.loads(out.getvalue())["steps"][0]
    assert [(c["provider"], c["status"], c["http_status"], c["round"]) for c in step["llm_calls"]] == [
        ("primary", "failed", 500, 1), ("secondary", "succeeded", 200, 1), ("primary", "succeeded", 200, 2),
        ("primary", "succeeded", 200, 3)]
    assert step["llm_calls"][1]["input_tokens"] == 30 and step["llm_calls"][1]["cost_usd"] == "0.030000"
    tool = step["tool_calls"][0]
    assert (tool["tool"], tool["arguments"], tool["output"], tool["status"], tool["executions"]) == (
        "lookup", {"query": "<otters>"}, {"found": "facts about <otters>"}, "completed", 1)

    api = client_for(make_user("svc", SERVICE_PERMS))
    detail = api.get(f"/api/v1/runs/{run.pk}/steps/ask/").json()
    assert detail["tool_calls"] == [{k: tool[k] for k in detail["tool_calls"][0]}]
    assert detail["tool_calls"][0]["executions"] == 1 and detail["tool_calls"][0]["round"] == 1
    assert [c["http_status"] for c in detail["llm_calls"]] == [500, 200, 200, 200]


@pytest.fixture
def auditor(db: Any) -> User:
    """Staff with every permission Django has on the audit records, but not a superuser."""
    user = User.objects.create_user("auditor", password="auditor-pass-123", is_staff=True)
    codenames = [f"{verb}_{model}" for verb in ("add", "change", "delete", "view")
                 for model in ("llmcall", "toolcall", "runevent", "run")]
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def test_audit_records_are_read_only_and_only_a_superuser_may_delete_them(db: Any, auditor: User) -> None:
    from runs.models import Run, Workflow, Workspace

    workflow = Workflow.objects.create(workspace=Workspace.default(), name="w", version=1, definition={},
                                       content_hash="h")
    run = Run.objects.create(workspace=workflow.workspace, workflow=workflow, workflow_name="w")
    step = StepExecution.objects.create(run=run, key="ask", name="ask", type="llm")
    call = LLMCall.objects.create(step=step, run=run, provider_name="p", kind="openai", model="m")
    tool = ToolCall.objects.create(step=step, round=1, call_id="c1", tool="lookup", handler="h", idempotency_key="k")
    event = RunEvent.objects.create(run=run, kind="run_started")
    records = [("providers", "llmcall", call.pk), ("providers", "toolcall", tool.pk), ("runs", "runevent", event.pk)]

    client = Client()
    client.force_login(auditor)
    for app, model, pk in records:
        listing = client.get(reverse(f"admin:{app}_{model}_changelist"))
        assert listing.status_code == 200 and b"delete_selected" not in listing.content, model
        page = client.get(reverse(f"admin:{app}_{model}_change", args=[pk]))
        assert page.status_code == 200 and b'class="deletelink"' not in page.content and b"Save" not in page.content
        assert client.post(reverse(f"admin:{app}_{model}_delete", args=[pk]), {"post": "yes"}).status_code == 403
        assert client.get(reverse(f"admin:{app}_{model}_add")).status_code == 403
        refused = client.post(reverse(f"admin:{app}_{model}_changelist"),
                              {"action": "delete_selected", "_selected_action": [pk], "post": "yes"})
        assert refused.status_code in (200, 302)
    assert LLMCall.objects.filter(pk=call.pk).exists() and ToolCall.objects.filter(pk=tool.pk).exists()
    assert RunEvent.objects.filter(pk=event.pk).exists()

    root = Client()
    root.force_login(User.objects.create_superuser("root", password="root-pass-123"))
    for app, model, pk in records:
        assert b"delete_selected" in root.get(reverse(f"admin:{app}_{model}_changelist")).content
        assert root.get(reverse(f"admin:{app}_{model}_add")).status_code == 403  # nobody writes history
        assert root.post(reverse(f"admin:{app}_{model}_delete", args=[pk]), {"post": "yes"}).status_code == 302
    assert not LLMCall.objects.exists() and not ToolCall.objects.exists() and not RunEvent.objects.exists()


def test_the_timeline_axis_uses_one_unit_per_axis() -> None:
    for span, unit in ((0.4, "ms"), (12.0, "s"), (160.8, "s"), (700.0, "m"), (40000.0, "h")):
        labels = [label for _, label in axis_ticks(span)]
        assert all(re.fullmatch(rf"[\d.]+{unit}", label) for label in labels), (span, labels)
        assert len(set(labels)) == 5, labels  # no two ticks read the same
    assert [label for _, label in axis_ticks(160.8)] == ["0s", "40s", "80s", "121s", "161s"]
