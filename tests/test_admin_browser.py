"""A real browser in the approval inbox: Playwright for Python driving Debian's Chromium headless.

Install the browser with ``bin/install-browser`` (apt-get install chromium); Playwright
never downloads one here: it is pointed at /usr/bin/chromium.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from approvals.models import ApprovalStatus
from runs.services import start_run
from tests.approval_support import finished, pending_approval, review_workflow
from tests.support.llm_server import llm_server_fixture, llm_server_session_fixture  # noqa: F401  (fixtures)
from tests.test_llm_transcript_and_audit import agent_run

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's Chromium is not installed at /usr/bin/chromium; "
                                       "run bin/install-browser")


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the ORM calls this test
    # makes between browser steps are plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            yield instance
        finally:
            instance.close()


def log_in(browser: Any, base: str, username: str, password: str, next_path: str) -> Any:
    page = browser.new_context().new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{base}/admin/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(f"**{next_path}")
    return page


def test_a_reviewer_approves_in_the_browser_and_sees_the_run_finish(
        engine: Any, live_server: Any, workflow: Any, alice: User, bob: User, browser: Any) -> None:
    workflow(review_workflow())
    run = start_run("review-flow", {"topic": "estuary"}).run
    other = start_run("review-flow", {"topic": "delta"}).run
    approval = pending_approval(run.pk)
    other_approval = pending_approval(other.pk)
    inbox = "/admin/approvals/approval/"

    page = log_in(browser, live_server.url, "alice", "alice-pass-123", inbox)
    assert page.locator(f"a[href='{inbox}{approval.pk}/change/']").count() == 1
    page.click(f"a[href='{inbox}{approval.pk}/change/']")
    assert "estuary" in page.inner_text("#approval-content")
    page.fill("#id_comment", "approved from the browser")
    page.click("#approve-button")
    page.wait_for_url(f"**{inbox}")
    assert "Approved approval" in page.inner_text("ul.messagelist")

    finished(run.pk)
    page.goto(f"{live_server.url}/admin/runs/run/{run.pk}/change/")
    assert page.inner_text("#run-status") == "completed"
    assert page.locator("#timeline tr[data-step='publish']").count() == 1
    assert "approved from the browser" in page.inner_text("#history")
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.APPROVED and approval.decided_by_name == "alice"

    page = log_in(browser, live_server.url, "bob", "bob-pass-123", inbox)
    page.goto(f"{live_server.url}{inbox}{other_approval.pk}/change/")
    assert page.locator("#approve-button").count() == 0
    assert page.locator("#reject-button").count() == 0
    assert "cannot decide" in page.inner_text("#no-decide")
    if os.environ.get("STEVORA_SCREENSHOTS"):
        page.screenshot(path=os.path.join(os.environ["STEVORA_SCREENSHOTS"], "bob-approval.png"), full_page=True)


def test_an_llm_steps_transcript_and_the_llm_call_list_in_the_browser(
        engine: Any, live_server: Any, workflow: Any, llm_server: Any, browser: Any, tmp_path: Path) -> None:
    run = agent_run(workflow, llm_server)
    User.objects.create_superuser("root", password="root-pass-123")
    run_page = f"/admin/runs/run/{run.pk}/change/"
    page = log_in(browser, live_server.url, "root", "root-pass-123", run_page)
    page.set_viewport_size({"width": 1400, "height": 900})
    page.click("#step-ask > summary")
    transcript = page.locator("#step-ask .transcript")
    assert transcript.is_visible()
    roles = transcript.locator(".turn").evaluate_all("turns => turns.map(t => t.dataset.role)")
    assert roles == ["system", "user", "assistant", "assistant", "feedback", "assistant"]
    tool = transcript.locator(".tool-call[data-tool='lookup']")
    assert tool.is_visible()
    # Escaped in the HTML, so the browser shows the text itself, not markup.
    assert '"query": "<otters>"' in tool.locator(".tool-arguments").inner_text()
    assert '"found": "facts about <otters>"' in tool.locator(".tool-result").inner_text()
    assert "fallback: answered by secondary after primary" in transcript.inner_text()
    assert transcript.locator(".failed-attempt").count() == 1
    assert not page.locator("#step-ask details.raw pre").first.is_visible()  # raw JSON stays folded
    page.locator("#step-ask .transcript").screenshot(path=str(os.environ.get("STEVORA_SCREENSHOT_DIR", tmp_path))
                                                     + "/transcript.png")

    # The LLM-call list fits a 1400 px window: no horizontal scrolling.
    page.goto(f"{live_server.url}/admin/providers/llmcall/")
    assert page.locator("#result_list tbody tr").count() == 4
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1] == 1400, widths
