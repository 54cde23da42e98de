"""``GET /api/v1/runs/<id>/stream/`` over a real server (gunicorn, threaded, on 127.0.0.1):
a run's history events and its streamed LLM text as Server-Sent Events; resumable with
``Last-Event-ID`` without a history event sent twice; scoped to the key's workspace."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.services import create_key
from providers.models import Provider
from providers.wire import SSEParser
from runs.models import RunEvent, Workspace
from runs.services import start_run
from tests.api_support import make_user
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    make_provider,
)
from tests.support.tree import start_gunicorn
from tests.support.workers import subprocess_env

ANSWER = " ".join(f"word{i}" for i in range(40))


@pytest.fixture
def web(transactional_db: Any) -> Iterator[str]:
    env = subprocess_env(DEBUG="0", SECRET_KEY="sse-test-secret-key-" + "x" * 40, STEVORA_SSE_MAX_SECONDS="20",
                         DJANGO_SETTINGS_MODULE="stevora_project.settings_test")
    url, proc = start_gunicorn(env, threads=4, timeout=60)
    yield url
    proc.kill()


def _key(workspace: Workspace | None = None, name: str = "watcher") -> str:
    user = make_user(name)
    return create_key(name=f"{name} key", user=user, workspace=workspace or Workspace.default()).plaintext


def _events(url: str, key: str, run_id: Any, *, last_event_id: str = "", stop_after_history: int | None = None,
            on_delta: Any = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(event, id, data) until ``end`` (or after ``stop_after_history`` history events: a disconnect)."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    out: list[tuple[str, str, dict[str, Any]]] = []
    seen_history = 0
    with httpx.stream("GET", f"{url}/api/v1/runs/{run_id}/stream/", headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        parser, event_id = SSEParser(), ""
        for line in response.iter_lines():
            if line.startswith("id:"):
                event_id = line[3:].strip()
                continue
            event = parser.feed(line)
            if event is None:
                continue
            name, data = event
            out.append((name, event_id, json.loads(data)))
            if name == "delta" and on_delta is not None:
                on_delta(out[-1][2])
            if name == "history":
                seen_history += 1
                if stop_after_history is not None and seen_history >= stop_after_history:
                    return out
            if name in ("end", "reconnect"):
                return out
    return out


def _streaming_workflow(workflow: Any, name: str) -> None:
    Provider.objects.get_or_create(name="fake-sse", defaults=dict(
        kind="fake", model="fake-1", options={"stream_delay_seconds": 0.03, "script": [{"text": ANSWER}]}))
    workflow({"name": name, "steps": [
        {"name": "first", "type": "task", "handler": "test.value", "config": {"value": 1}, "next": "draft"},
        {"name": "draft", "type": "llm", "provider": "fake-sse", "stream": True,
         "messages": [{"role": "user", "content": "Write forty words"}]},
    ]})


def test_the_stream_delivers_history_events_and_the_text_as_it_is_written(web: str, engine: Any, workflow: Any,
                                                                            llm_server: Any) -> None:
    make_provider(llm_server, "writer", kind="openai", timeout_seconds=30)
    # The model stalls after a few pieces until the test has seen one arrive: the step cannot be
    # done before a delta reached the watcher.
    llm_server.script("writer", {"text": ANSWER, "hang_at": 6, "stream_hang": 30})
    workflow({"name": "sse-live", "steps": [
        {"name": "first", "type": "task", "handler": "test.value", "config": {"value": 1}, "next": "draft"},
        {"name": "draft", "type": "llm", "provider": "writer", "stream": True,
         "messages": [{"role": "user", "content": "Write forty words"}]},
    ]})
    key = _key()
    run = start_run("sse-live", {}).run
    seen_running: list[str] = []

    def first_delta(delta: dict[str, Any]) -> None:
        if not seen_running:
            seen_running.append(run.steps.get(key="draft").status)
            llm_server.release()

    events = _events(web, key, run.pk, on_delta=first_delta)

    assert seen_running == ["running"]  # text reached the watcher while the step was writing it
    assert events[-1][0] == "end" and events[-1][2] == {"status": "completed"}
    history = [data for name, _, data in events if name == "history"]
    assert [h["id"] for h in history] == list(RunEvent.objects.filter(run_id=run.pk).order_by("id")
                                               .values_list("id", flat=True))
    assert {"run_started", "run_completed"} <= {h["kind"] for h in history}
    deltas = [data for name, _, data in events if name == "delta"]
    assert len(deltas) > 1  # the text came in pieces
    assert "".join(d["text"] for d in deltas if d["kind"] == "text") == ANSWER
    assert {(d["step"], d["round"], d["provider"]) for d in deltas} == {("draft", 1, "writer")}
    names = [(name, data.get("kind"), data.get("step_key")) for name, _, data in events]
    first = next(i for i, e in enumerate(names) if e[0] == "delta")
    draft_done = next(i for i, e in enumerate(names) if e[1] == "step_completed" and e[2] == "draft")
    assert first < draft_done
    run = wait_for_run(run.pk)
    assert isinstance(run.output, dict) and run.output["text"] == ANSWER


def test_last_event_id_resumes_without_repeating_a_history_event(web: str, engine: Any, workflow: Any) -> None:
    _streaming_workflow(workflow, "sse-resume")
    key = _key()
    run = start_run("sse-resume", {}).run
    first = _events(web, key, run.pk, stop_after_history=2)
    last_id = first[-1][1]
    second = _events(web, key, run.pk, last_event_id=last_id)

    assert second[-1][0] == "end"
    ids = [data["id"] for name, _, data in first + second if name == "history"]
    assert len(ids) == len(set(ids))  # none twice
    assert ids == list(RunEvent.objects.filter(run_id=run.pk).order_by("id").values_list("id", flat=True))
    # Deltas resumed from the cursor too (best effort; here the channel still held every piece).
    texts = [data["text"] for name, _, data in first + second if name == "delta" and data["kind"] == "text"]
    assert "".join(texts) == ANSWER
    # A finished run's stream sends what remains and ends at once.
    again = _events(web, key, run.pk, last_event_id=second[-1][1])
    assert [name for name, _, _ in again] == ["end"]


def test_the_stream_is_scoped_to_the_keys_workspace_and_checks_its_last_event_id(web: str, engine: Any,
                                                                                 workflow: Any) -> None:
    _streaming_workflow(workflow, "sse-scope")
    run = wait_for_run(start_run("sse-scope", {}).run.pk)
    other = _key(Workspace.objects.create(slug="elsewhere", name="Elsewhere"), name="outsider")
    url = f"{web}/api/v1/runs/{run.pk}/stream/"

    assert httpx.get(url, timeout=10).status_code == 401
    response = httpx.get(url, headers={"Authorization": f"Bearer {other}"}, timeout=10)
    assert response.status_code == 404 and response.json()["type"] == "not_found"
    response = httpx.get(url, headers={"Authorization": f"Bearer {_key()}", "Last-Event-ID": "abc:xyz"},
                         timeout=10)
    assert response.status_code == 400
    assert "Last-Event-ID" in response.text
