"""The admin run page shows a streamed llm step's text as it is written (a real browser, the
run's Server-Sent Events with the admin session), then the recorded answer once it is done."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from runs.services import start_run
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    make_provider,
)
from tests.support.workers import wait_until
from tests.test_admin_browser import CHROMIUM, browser, log_in  # noqa: F401  (browser: the fixture)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's Chromium is not installed at /usr/bin/chromium; "
                                       "run bin/install-browser")

ANSWER = " ".join(f"piece{i}" for i in range(40))


def test_the_run_page_shows_the_answer_as_it_is_written_then_the_recorded_one(
        engine: Any, live_server: Any, workflow: Any, browser: Any, llm_server: Any) -> None:  # noqa: F811
    User.objects.create_superuser("root", password="root-pass-123")
    make_provider(llm_server, "writer", kind="openai", timeout_seconds=60)
    # The model stalls after its first pieces until the test saw them on the page.
    llm_server.script("writer", {"text": ANSWER, "hang_at": 6, "stream_hang": 60})
    workflow({"name": "admin-live", "steps": [
        {"name": "draft", "type": "llm", "provider": "writer", "stream": True,
         "messages": [{"role": "user", "content": "Write"}]}]})
    run = start_run("admin-live", {}).run
    wait_until(lambda: run.steps.filter(key="draft", status="running").exists(), timeout=20,
               message="the llm step to start")
    path = f"/admin/runs/run/{run.pk}/change/"
    page = log_in(browser, live_server.url, "root", "root-pass-123", path)

    page.wait_for_function("document.querySelector('.live-text .live-answer') && "
                           "document.querySelector('.live-text .live-answer').textContent.includes('piece0')")
    shown = page.locator(".live-text[data-step='draft'] .live-answer").text_content() or ""
    assert shown.startswith("piece0") and ANSWER.startswith(shown)
    assert run.steps.get(key="draft").status == "running"  # on the page before the step was done
    llm_server.release()

    # Done: the page reloads itself and shows the recorded transcript, without the live box.
    assert wait_for_run(run.pk).status == "completed"
    page.wait_for_function("!document.querySelector('.live-text')")
    assert ANSWER in (page.locator(".transcript[data-step='draft'] .turn-assistant .turn-text").text_content() or "")
