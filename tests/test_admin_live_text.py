"""The admin run page shows a streamed llm step's text as it is written (a real browser, the
run's Server-Sent Events with the admin session), then the recorded answer once it is done."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from providers.models import Provider
from runs.services import start_run
from tests.conftest import wait_for_run
from tests.support.workers import wait_until
from tests.test_admin_browser import CHROMIUM, browser, log_in  # noqa: F401  (browser: the fixture)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's Chromium is not installed at /usr/bin/chromium; "
                                       "run bin/install-browser")

ANSWER = " ".join(f"piece{i}" for i in range(40))


def test_the_run_page_shows_the_answer_as_it_is_written_then_the_recorded_one(
        engine: Any, live_server: Any, workflow: Any, browser: Any) -> None:  # noqa: F811
    User.objects.create_superuser("root", password="root-pass-123")
    Provider.objects.create(name="fake-slow", kind="fake", model="fake-1",
                            options={"stream_delay_seconds": 0.1, "script": [{"text": ANSWER}]})
    workflow({"name": "admin-live", "steps": [
        {"name": "draft", "type": "llm", "provider": "fake-slow", "stream": True,
         "messages": [{"role": "user", "content": "Write"}]}]})
    run = start_run("admin-live", {}).run
    wait_until(lambda: run.steps.filter(key="draft", status="running").exists(), timeout=20,
               message="the llm step to start")
    path = f"/admin/runs/run/{run.pk}/change/"
    page = log_in(browser, live_server.url, "root", "root-pass-123", path)

    live = page.locator(".live-text[data-step='draft'] .live-answer")
    page.wait_for_function("document.querySelector('.live-text .live-answer') && "
                           "document.querySelector('.live-text .live-answer').textContent.includes('piece3')")
    shown = live.text_content() or ""
    assert shown.startswith("piece0 piece1") and ANSWER.startswith(shown.strip())
    # Part of the answer was on the page before the step was done.
    assert run.steps.get(key="draft").status == "running"

    # Done: the page reloads itself and shows the recorded transcript, without the live box.
    assert wait_for_run(run.pk).status == "completed"
    page.wait_for_function("!document.querySelector('.live-text')")
    assert ANSWER in (page.locator(".transcript[data-step='draft'] .turn-assistant .turn-text").text_content() or "")
