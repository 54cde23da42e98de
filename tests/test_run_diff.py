"""Two runs compared: where they first part, and per step what differs — input, output,
status, and for llm steps the model conversation and the tool calls. One service
(``runs.services.diff_runs``), three doors: ``manage.py diff_runs``, the API, the admin."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from runs.services import diff_runs, fork_run, start_run
from tests.api_support import client_for, make_user, other_workspace
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    make_provider,
)

LOOKUP = {"handler": "test.tool.lookup", "name": "lookup", "effects": "read_only",
          "parameters": {"type": "object", "required": ["query"], "properties": {"query": {"type": "string"}}}}


def three_step_agent(name: str = "diffable") -> dict[str, Any]:
    """prep (same in both runs) -> ask (an agent with a tool) -> post (repeats ask's answer)."""
    return {"name": name, "steps": [
        {"name": "prep", "type": "task", "handler": "test.value", "config": {"value": {"topic": "{{ input.topic }}"}}},
        {"name": "ask", "type": "llm", "provider": "agent", "tools": [LOOKUP],
         "messages": [{"role": "user", "content": "Tell me about {{ steps.prep.output.topic }}"}]},
        {"name": "post", "type": "task", "handler": "test.value", "config": {"value": "{{ steps.ask.output.text }}"}},
    ]}


@pytest.fixture
def two_runs(engine: Any, workflow: Any, llm_server: Any) -> tuple[Any, Any]:
    """Run A, and B: a fork of A from ``ask`` whose model looked up something else and answered otherwise."""
    make_provider(llm_server, "agent", max_retries=0)
    workflow(three_step_agent())
    llm_server.script("agent", {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"query": "otters"}}]},
                      {"text": "Otters hold hands."})
    a = wait_for_run(start_run("diffable", {"topic": "animals"}).run.pk)
    assert a.status == "completed", a.error
    llm_server.script("agent", {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"query": "bees"}}]},
                      {"text": "Bees dance."})
    b = wait_for_run(fork_run(a.pk, from_step="ask").pk)
    assert b.status == "completed", b.error
    return a, b


def test_two_runs_part_at_the_step_whose_model_answered_otherwise(two_runs: tuple[Any, Any]) -> None:
    a, b = two_runs
    diff = diff_runs(a.pk, b.pk)

    assert diff["first_difference"] == {"step": "ask", "outcome": "differs",
                                        "differing": ["conversation", "output", "tool_calls"]}
    assert [(s["key"], s["outcome"]) for s in diff["steps"]] == [("prep", "same"), ("ask", "differs"),
                                                                 ("post", "differs")]
    ask = {(d["field"], d["path"]): (d["a"], d["b"]) for d in diff["steps"][1]["differences"]}
    assert ask[("output", "text")] == ("Otters hold hands.", "Bees dance.")
    assert ask[("tool_calls", "round 1 #1.arguments.query")] == ("otters", "bees")
    assert ask[("tool_calls", "round 1 #1.output.found")] == ("facts about otters", "facts about bees")
    assert ask[("conversation", "round 1.answer.tool_calls[0].arguments.query")] == ("otters", "bees")
    assert ask[("conversation", "round 2.answer.text")] == ("Otters hold hands.", "Bees dance.")
    # Round 1 asked the same question; round 2's question carried a different tool result.
    assert ("conversation", "round 1.asked") not in ask and ("conversation", "round 2.asked") in ask
    assert diff["run_differences"] == [{"field": "output", "path": "", "a": "Otters hold hands.",
                                        "b": "Bees dance."}]
    assert diff["b"]["forked_from"] == str(a.pk) and not diff["identical"]
    assert diff_runs(a.pk, a.pk)["identical"] is True


def test_diff_runs_draws_where_the_runs_part_and_prints_json_for_scripts(two_runs: tuple[Any, Any]) -> None:
    a, b = two_runs
    out = StringIO()
    call_command("diff_runs", str(a.pk), str(b.pk), stdout=out)
    text = out.getvalue()
    assert "the runs part at step ask: differs in conversation, output, tool_calls" in text
    assert "= prep" in text and "≠ ask" in text
    assert '    output.text: Otters hold hands. → Bees dance.' in text
    assert '    tool_calls.round 1 #1.arguments.query: otters → bees' in text

    out = StringIO()
    call_command("diff_runs", str(a.pk), str(b.pk), "--json", stdout=out)
    assert json.loads(out.getvalue())["first_difference"]["step"] == "ask"
    with pytest.raises(CommandError, match="no run with id 'nope'"):
        call_command("diff_runs", str(a.pk), "nope")


def test_the_api_serves_the_diff_only_inside_the_callers_workspace(two_runs: tuple[Any, Any], db: Any) -> None:
    a, b = two_runs
    api = client_for(make_user("viewer", ["view_run"]))
    response = api.get(f"/api/v1/runs/{a.pk}/diff/{b.pk}/")
    assert response.status_code == 200, response.content
    assert response.json() == json.loads(json.dumps(diff_runs(a.pk, b.pk), default=str))

    outsider = client_for(make_user("outsider", ["view_run"]), workspace=other_workspace())
    assert outsider.get(f"/api/v1/runs/{a.pk}/diff/{b.pk}/").status_code == 404
    assert api.get(f"/api/v1/runs/{a.pk}/diff/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_the_admin_run_page_links_to_a_diff_page_that_shows_where_the_runs_part(two_runs: tuple[Any, Any]) -> None:
    a, b = two_runs
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", password="root-pass-123"))
    page = admin.get(reverse("admin:runs_run_change", args=[b.pk])).content.decode()
    diff_url = reverse("admin:runs_run_diff", args=[a.pk]) + f"?other={b.pk}"
    assert f'href="{diff_url}"' in page and 'id="diff-form"' in page

    response = admin.get(diff_url)
    assert response.status_code == 200
    html = response.content.decode()
    assert "The runs part at step <strong><code>ask</code></strong>" in html
    assert "Bees dance." in html and "diff-first" in html
    assert admin.get(reverse("admin:runs_run_diff", args=[a.pk]) + "?other=zzz").status_code == 400
