"""The admin dashboard draws a known workload as server-side SVG: runs per hour by status, the
failure rate, p50/p95 step durations, LLM cost per day by provider, the oldest waiting
approvals; names are escaped; a browser follows the link from the admin index to it."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from providers.models import LLMCall
from runs.services import start_run
from tests.approval_support import pending_approval, review_workflow
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    make_provider,
)
from tests.test_admin_browser import CHROMIUM, browser, log_in  # noqa: F401  (fixture)

DASHBOARD = "/admin/runs/run/dashboard/"


def known_workload(workflow: Any, llm_server: Any) -> Any:
    """2 completed + 1 failed task runs, 1 completed LLM run ($0.00035), 1 run waiting for approval."""
    task = {"type": "task", "handler": "test.value", "config": {"value": 1}}
    workflow({"name": "d-ok", "steps": [{"name": "a", **task}, {"name": "b", **task}]})
    workflow({"name": "d-bad", "steps": [{"name": "boom", "type": "task", "handler": "test.permanent"}]})
    make_provider(llm_server, "priced", input_price_per_mtok=Decimal("2.5"), output_price_per_mtok=Decimal("10"))
    llm_server.script("priced", default={"text": "ok", "usage": (100, 10)})
    workflow({"name": "d-llm", "steps": [
        {"name": "ask", "type": "llm", "provider": "priced", "messages": [{"role": "user", "content": "hi"}]}]})
    workflow(review_workflow())
    for name, status in (("d-ok", "completed"), ("d-ok", "completed"), ("d-bad", "failed"), ("d-llm", "completed")):
        assert wait_for_run(start_run(name, {}).run.pk).status == status
    return pending_approval(start_run("review-flow", {"topic": "t"}).run.pk)


def bar_values(html: str, chart: str, series: str) -> float:
    svg = re.search(rf'<svg id="{chart}".*?</svg>', html, re.S)
    assert svg, html
    return sum(float(v.lstrip("$")) for v in re.findall(
        rf'<rect class="bar"[^>]*data-series="{re.escape(series)}"[^>]*data-value="([^"]+)"', svg.group(0)))


def test_the_dashboard_draws_the_workload_and_escapes_names(engine: Any, workflow: Any, llm_server: Any) -> None:
    approval = known_workload(workflow, llm_server)
    LLMCall.objects.update(provider_name="<script>alert(1)</script>")
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="root-pass-123"))

    index = client.get("/admin/").content.decode()
    assert f'href="{DASHBOARD}"' in index
    response = client.get(DASHBOARD)
    assert response.status_code == 200
    html = response.content.decode()

    assert bar_values(html, "runs-per-hour", "completed") == 3
    assert bar_values(html, "runs-per-hour", "failed") == 1
    assert bar_values(html, "runs-per-hour", "waiting") == 1
    assert "<strong>25.0%</strong> (1 failed of 4 finished)" in html
    rows = dict(re.findall(r'<tr data-type="([^"]+)"><td>[^<]*</td><td>(\d+)</td>', html))
    assert rows["task"] == "6" and rows["llm"] == "1"  # 2 x 2 + boom + the review flow's draft
    task_row = re.search(
        r'<tr data-type="task">.*?class="p50" data-seconds="([^"]+)".*?class="p95" data-seconds="([^"]+)"', html)
    assert task_row is not None
    p50, p95 = (float(x) for x in task_row.groups())
    assert 0 <= p50 <= p95
    assert "Total: <strong>$0.000350</strong>" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    assert bar_values(html, "llm-cost-per-day", "&lt;script&gt;alert(1)&lt;/script&gt;") == 0.00035
    assert f'<tr data-approval="{approval.pk}">' in html
    assert f'href="/admin/approvals/approval/{approval.pk}/change/"' in html


def test_the_dashboard_needs_the_view_run_permission(db: Any) -> None:
    client = Client()
    assert client.get(DASHBOARD).status_code == 302  # to the login page
    staff = User.objects.create_user("carol", password="carol-pass-123", is_staff=True)
    client.force_login(staff)
    assert client.get(DASHBOARD).status_code == 403
    assert "dashboard-link" not in client.get("/admin/").content.decode()
    staff.user_permissions.add(Permission.objects.get(codename="view_run"))
    client.force_login(User.objects.get(pk=staff.pk))
    html = client.get(DASHBOARD).content.decode()
    assert 'id="runs-per-hour"' in html
    # Panels of apps the user may not see are left out.
    assert 'id="llm-cost-per-day"' not in html and 'id="panel-approvals"' not in html
    assert client.post(DASHBOARD).status_code == 405


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is not installed at /usr/bin/chromium; "
                                                   "run bin/install-browser")
def test_a_browser_follows_the_index_link_to_the_drawn_dashboard(
        engine: Any, live_server: Any, workflow: Any, llm_server: Any, browser: Any) -> None:  # noqa: F811
    approval = known_workload(workflow, llm_server)
    User.objects.create_superuser("root", password="root-pass-123")
    page = log_in(browser, live_server.url, "root", "root-pass-123", "/admin/")
    page.click("#dashboard-link a")
    page.wait_for_url(f"**{DASHBOARD}")

    chart = page.locator("svg#runs-per-hour")
    box = chart.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 50
    assert page.locator("svg#runs-per-hour rect.bar[data-series='completed']").count() >= 1
    assert page.locator("svg#llm-cost-per-day rect.bar").count() == 1
    assert "25.0%" in page.inner_text("#failure-rate")
    assert page.locator("#step-durations tr[data-type='task'] td.p95").count() == 1
    page.click(f"#oldest-approvals tr[data-approval='{approval.pk}'] a")
    page.wait_for_url(f"**/admin/approvals/approval/{approval.pk}/change/")
