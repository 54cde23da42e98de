"""``/metrics``: after a known workload on the real engine, a scrape over HTTP (gunicorn on
127.0.0.1) parses as Prometheus text and holds the workload's numbers; a client that is not
on loopback needs the bearer token."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from events.services import deliver_event
from providers.models import BreakerState, Provider, ProviderHealth
from runs.services import start_run
from steps.models import StepExecution
from stevora_project.wsgi import application
from tests.approval_support import pending_approval, review_workflow, wait_parked
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    make_provider,
)
from tests.support.tree import fetch, free_port, stop, wait_for_http
from tests.support.workers import ROOT, subprocess_env
from webhooks.models import WebhookDelivery

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wsgi_get(path: str, remote_addr: str, **headers: str) -> tuple[str, bytes]:
    """One request through the project's WSGI application, from ``remote_addr``."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "localhost",
        "SERVER_PORT": "80", "HTTP_HOST": "localhost", "REMOTE_ADDR": remote_addr, "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.version": (1, 0), "wsgi.multithread": False,
        "wsgi.multiprocess": False, "wsgi.run_once": False, "SERVER_PROTOCOL": "HTTP/1.1",
    }
    environ.update({f"HTTP_{k.upper()}": v for k, v in headers.items()})
    status: list[str] = []
    body = b"".join(application(environ, lambda s, h, *a: status.append(s)))  # type: ignore[arg-type]
    return status[0], body


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "stevora_project.wsgi", "--bind",
                                 f"127.0.0.1:{port}", "--workers", "1"], cwd=ROOT, env=subprocess_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def test_a_scrape_after_a_known_workload_reports_its_runs_steps_llm_calls_and_backlogs(
        engine: Any, workflow: Any, llm_server: Any, gunicorn: str) -> None:
    task = {"type": "task", "handler": "test.value", "config": {"value": 1}}
    workflow({"name": "m-ok", "steps": [{"name": "a", **task}, {"name": "b", **task}]})
    workflow({"name": "m-bad", "steps": [{"name": "boom", "type": "task", "handler": "test.permanent"}]})
    make_provider(llm_server, "priced", input_price_per_mtok=Decimal("2.5"), output_price_per_mtok=Decimal("10"))
    llm_server.script("priced", default={"text": "ok", "usage": (100, 10)})
    workflow({"name": "m-llm", "steps": [
        {"name": "ask", "type": "llm", "provider": "priced", "messages": [{"role": "user", "content": "hi"}]}]})
    workflow({"name": "m-wait", "steps": [{"name": "paid", "type": "external_event", "event": "never"}]})
    workflow(review_workflow())

    done = [wait_for_run(start_run("m-ok", {}).run.pk) for _ in range(3)]
    assert [r.status for r in done] == ["completed"] * 3
    assert wait_for_run(start_run("m-bad", {}).run.pk).status == "failed"
    assert wait_for_run(start_run("m-llm", {}).run.pk).status == "completed"
    wait_parked(start_run("m-wait", {}).run.pk)
    pending_approval(start_run("review-flow", {"topic": "x"}).run.pk)
    # What the engine writes when a worker is lost mid-step, a breaker opens, a webhook gives up:
    # set on the rows directly (those paths have their own tests).
    StepExecution.objects.filter(run_id=done[0].pk, key="a").update(recovery_count=2)
    Provider.objects.create(name="down", model="m", base_url="http://127.0.0.1:9/v1")
    ProviderHealth.objects.create(provider=Provider.objects.get(name="down"), state=BreakerState.OPEN)
    WebhookDelivery.objects.create(workspace_id=done[0].workspace_id, url="https://example.com/h",
                                   event="run_failed", payload={}, status="failed", attempts=8,
                                   last_attempt_at=timezone.now())
    WebhookDelivery.objects.create(workspace_id=done[0].workspace_id, url="https://example.com/h",
                                   event="run_failed", payload={}, status="pending", attempts=1,
                                   next_attempt_at=timezone.now())

    status, content_type, body = fetch(f"{gunicorn}/metrics")
    assert status == 200, body[:500]
    assert content_type.startswith("text/plain; version=0.0.4")
    m = parse(body.decode())

    assert value(m, "stevora_recent_runs", workflow="m-ok", status="completed") == 3
    assert value(m, "stevora_recent_runs", workflow="m-bad", status="failed") == 1
    assert value(m, "stevora_recent_runs", workflow="m-llm", status="completed") == 1
    assert value(m, "stevora_recent_runs", workflow="m-wait", status="waiting") == 1
    assert value(m, "stevora_runs_unfinished", status="waiting") == 2
    assert value(m, "stevora_runs_unfinished", status="running") == 0
    assert value(m, "stevora_steps_open", status="waiting", type="external_event") == 1
    assert value(m, "stevora_steps_open", status="waiting", type="approval") == 1
    assert value(m, "stevora_steps_open", status="ready", type="task") == 0

    hist = "stevora_recent_step_duration_seconds"
    assert value(m, f"{hist}_bucket", type="task", workflow="m-ok", le="+Inf") == 6
    assert value(m, f"{hist}_bucket", type="task", workflow="m-bad", le="+Inf") == 1
    buckets = [v for (name, labels), v in m.items()
               if name == f"{hist}_bucket" and ("workflow", "m-ok") in labels]
    assert len(buckets) == 15 and min(buckets) >= 0
    assert value(m, f"{hist}_gcount", type="task", workflow="m-ok") == 6
    assert value(m, f"{hist}_gsum", type="task", workflow="m-ok") >= 0

    assert value(m, "stevora_recent_step_lease_recoveries", workflow="m-ok") == 2
    assert value(m, "stevora_recent_steps_dead_lettered", workflow="m-bad") == 0
    assert value(m, "stevora_recent_llm_calls", provider="priced", model="priced-model", status="succeeded") == 1
    assert value(m, "stevora_recent_llm_tokens", provider="priced", model="priced-model", direction="input") == 100
    assert value(m, "stevora_recent_llm_tokens", provider="priced", model="priced-model", direction="output") == 10
    assert value(m, "stevora_recent_llm_cost_usd", provider="priced", model="priced-model") == pytest.approx(0.00035)
    assert value(m, "stevora_provider_breaker_state", provider="priced", state="closed") == 1
    assert value(m, "stevora_provider_breaker_state", provider="down", state="open") == 1
    assert value(m, "stevora_provider_breaker_state", provider="down", state="closed") == 0
    assert value(m, "stevora_approvals_pending") == 1
    assert value(m, "stevora_approval_oldest_pending_seconds") >= 0
    assert value(m, "stevora_recent_webhook_deliveries_failed", event="run_failed") == 1
    assert value(m, "stevora_webhook_deliveries_unsettled", status="pending", retrying="true") == 1

    # The event arrives: the backlog gauges follow the rows.
    deliver_event("never", payload={})
    wait_for_run(start_run("m-ok", {}).run.pk)
    m = parse(fetch(f"{gunicorn}/metrics")[2].decode())
    assert value(m, "stevora_recent_runs", workflow="m-wait", status="completed") == 1
    assert value(m, "stevora_steps_open", status="waiting", type="external_event") == 0
    assert value(m, "stevora_recent_runs", workflow="m-ok", status="completed") == 4

    # A step that lost its worker too often fails as dead-lettered (its own test kills workers).
    StepExecution.objects.filter(run__workflow_name="m-bad").update(
        error={"type": "dead_lettered", "message": "the step's worker was lost 6 times"})
    m = parse(fetch(f"{gunicorn}/metrics")[2].decode())
    assert value(m, "stevora_recent_steps_dead_lettered", workflow="m-bad") == 1


def test_a_client_not_on_loopback_is_refused_without_the_token(transactional_db: Any, settings: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    status, body = wsgi_get("/metrics", "127.0.0.1")
    assert status.startswith("200") and b"stevora_runs_unfinished" in body
    assert wsgi_get("/metrics", "::1")[0].startswith("200")

    status, body = wsgi_get("/metrics", "203.0.113.7")
    assert status.startswith("403") and b"STEVORA_METRICS_TOKEN" in body and b"stevora_" not in body
    # Through a proxy on the same host, the client is whoever the proxy forwards.
    assert wsgi_get("/metrics", "127.0.0.1", x_forwarded_for="203.0.113.7")[0].startswith("403")

    monkeypatch.setitem(settings.STEVORA, "METRICS_TOKEN", "s3cret-scrape")
    assert wsgi_get("/metrics", "203.0.113.7")[0].startswith("401")
    assert wsgi_get("/metrics", "203.0.113.7", authorization="Bearer wrong")[0].startswith("401")
    status, body = wsgi_get("/metrics", "203.0.113.7", authorization="Bearer s3cret-scrape")
    assert status.startswith("200") and b"stevora_runs_unfinished" in body
    assert wsgi_get("/metrics", "127.0.0.1")[0].startswith("200")
