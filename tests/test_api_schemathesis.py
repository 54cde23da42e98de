"""Schemathesis against the API as a user runs it: gunicorn (threaded, DEBUG off) on 127.0.0.1.

The served schema (/api/schema/) drives the coverage, fuzzing and stateful phases with
every response check: no 5xx, no response that breaks the schema, no undocumented
status code, no header or content type other than documented, schema-invalid
input refused and schema-valid input not refused for being invalid. Twice: with a key
that may do everything in the default workspace (where a workflow, runs, a pending
approval and an event exist, so requests reach real code paths), and with a key of
another workspace (where every one of those objects is a 404).

Examples per operation: ``SCHEMATHESIS_EXAMPLES`` (default 5, which keeps this test
near a minute on two cores). The release check runs it with 100 (docs/api.md):

    SCHEMATHESIS_EXAMPLES=100 DATABASE_URL=… CELERY_BROKER_URL=… pytest tests/test_api_schemathesis.py

The schemathesis run is PostgreSQL only: it is the production database and the
stricter one (it refuses NUL and lone surrogates that SQLite stores), the embedded
mode serves the same views, and the suite's time budget holds one such run. The
hostile-request test over gunicorn runs in both modes. Each starts a fresh worker
whose first requests are eight concurrent requests for the schema.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.db import connection

from api.services import create_key
from approvals.models import Approval
from events.services import deliver_event
from runs.models import Workspace
from runs.services import load_workflow, start_run
from tests.api_support import approval_first, three_steps
from tests.support.procs import ROOT, Proc
from tests.support.tree import start_gunicorn
from tests.support.workers import subprocess_env

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "5"))
CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_headers_conformance",
    "response_schema_conformance", "negative_data_rejection", "ignored_auth",
])
# Not positive_data_acceptance: a request the schema allows may still be refused by rules no OpenAPI
# schema can state (a definition's step names and handlers, a fork's `from_step`, an approval that
# does not allow edits, text with NUL); those answers are documented 400s naming the field.

postgres_only = pytest.mark.skipif(connection.vendor != "postgresql",
                                   reason="runs on PostgreSQL (the production database); see the module docstring")


@pytest.fixture
def gunicorn(transactional_db: Any) -> Any:
    env = subprocess_env(DEBUG="0", SECRET_KEY=secrets.token_urlsafe(40),
                         DJANGO_SETTINGS_MODULE="stevora_project.settings_test")
    url, proc = start_gunicorn(env, threads=8, timeout=120)
    yield url, proc
    proc.kill()


def _key(user: User, workspace: Workspace) -> str:
    return create_key(name=f"schemathesis {workspace.slug}", user=user, workspace=workspace,
                      rate="1000000/min").plaintext


def _config(tmp_path: Path, runs: list[str], approvals: list[int]) -> Path:
    """Identifiers of real objects, offered for path parameters and bodies most of the time (random ones
    the rest), so generated requests reach the views' logic and not only their 404s."""
    path = tmp_path / "schemathesis.toml"
    path.write_text(f"""
[dictionaries.runs]
values = {json.dumps(runs)}
[dictionaries.steps]
values = ["a", "b", "review", "after"]
[dictionaries.workflows]
values = ["api-three", "api-approval"]
[dictionaries.approvals]
values = {json.dumps(approvals)}
[parameters]
"path.run_id" = {{ dictionary = "runs", probability = 0.7 }}
"path.step_key" = {{ dictionary = "steps", probability = 0.7 }}
"path.name" = {{ dictionary = "workflows", probability = 0.7 }}
"path.approval_id" = {{ dictionary = "approvals", probability = 0.7 }}
"body.workflow" = {{ dictionary = "workflows", probability = 0.5 }}
"body.from_step" = {{ dictionary = "steps", probability = 0.5 }}
""")
    return path


def _schemathesis(url: str, key: str, label: str, config: Path) -> str:
    argv = [os.path.join(os.path.dirname(sys.executable), "schemathesis"), "--config-file", str(config), "run",
            f"{url}/api/schema/",
            "--phases", "coverage,fuzzing,stateful", "--checks", CHECKS, "--max-examples", str(EXAMPLES),
            "--header", f"Authorization: Bearer {key}", "--workers", "1", "--seed", "10",
            "--generation-database", "none", "--suppress-health-check", "all", "--request-timeout", "60",
            "--no-color", "--output-truncate", "true"]
    report_dir = os.environ.get("SCHEMATHESIS_REPORT_DIR")  # e.g. to count the cases per operation
    if report_dir:
        argv += ["--report", "ndjson", "--report-ndjson-path", os.path.join(report_dir, f"{label.split()[0]}.ndjson")]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    print(f"--- schemathesis ({label}) ---\n{output[-4000:]}")  # noqa: T201 - the summary, in the test log
    assert done.returncode == 0, f"schemathesis ({label}) found failures:\n{output[-20000:]}"
    return output


def _concurrent_first_schema_requests(url: str, proc: Proc) -> None:
    with ThreadPoolExecutor(8) as pool:  # the fresh worker's first requests for the schema, all at once
        answers = list(pool.map(lambda _: httpx.get(f"{url}/api/schema/?format=json", timeout=60), range(8)))
    assert [a.status_code for a in answers] == [200] * 8, proc.log()
    assert len({a.content for a in answers}) == 1


def test_gunicorn_answers_hostile_requests_in_the_json_error_body(gunicorn: Any) -> None:
    """Both modes: what a user runs (gunicorn, threads, DEBUG off), not the test client."""
    url, proc = gunicorn
    _concurrent_first_schema_requests(url, proc)
    user = User.objects.create_superuser("ops", password="ops-pass-123")
    load_workflow(three_steps())
    headers = {"Authorization": f"Bearer {_key(user, Workspace.default())}", "Content-Type": "application/json"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        big = http.post("/api/v1/events/", content=b'{"name": "n", "payload": "' + b"x" * (10 * 1024 * 1024) + b'"}')
        assert big.status_code == 413 and big.json()["type"] == "request_too_large"
        nul = http.get("/api/v1/definitions/", params={"name": "a\x00b"})
        assert nul.status_code == 400 and nul.json()["errors"][0]["field"] == "name"
        deep = http.post("/api/v1/runs/", content=b'{"workflow": "api-three", "input": ' + b'{"a":' * 1000 + b"1"
                         + b"}" * 1001)
        assert deep.status_code == 400 and deep.json()["errors"][0]["field"].startswith("input.a.a")
        surrogate = http.post("/api/v1/runs/", content=b'{"workflow": "api-three", "input": {"topic": "\\ud800"}}')
        assert surrogate.status_code == 400 and surrogate.json()["errors"][0]["field"] == "input.topic"
        missing = http.get("/api/v1/nowhere/")
        assert missing.status_code == 404 and missing.json()["type"] == "not_found"
        for path in ("/api/v1/definitions/", "/api/v1/runs/", "/api/v1/approvals/", "/api/v1/events/",
                     "/api/v1/cost/"):
            assert http.options(path).status_code == 200, path
        assert http.get("/api/v1/runs/", params={"page_size": "0"}).json()["errors"][0]["field"] == "page_size"
    assert "Internal Server Error" not in proc.log() and "Traceback" not in proc.log()


@postgres_only
def test_the_api_honours_its_schema_under_gunicorn_with_any_key(gunicorn: Any, tmp_path: Path) -> None:
    url, proc = gunicorn
    _concurrent_first_schema_requests(url, proc)

    fuzz = User.objects.create_superuser("fuzz", password="fuzz-pass-123")
    load_workflow(three_steps())
    load_workflow(approval_first())
    runs = [str(start_run("api-three", {"topic": topic}).run.pk) for topic in ("x", "y", "z")]
    runs += [str(start_run("api-approval", {"topic": topic}).run.pk) for topic in ("p", "q", "r")]
    approvals = list(Approval.objects.values_list("pk", flat=True))
    deliver_event("payment.received", key="A-1", payload={"amount": 1})
    other = Workspace.objects.create(slug="elsewhere", name="Elsewhere")
    config = _config(tmp_path, runs, approvals)

    full = _schemathesis(url, _key(fuzz, Workspace.default()), "full key", config)
    foreign = _schemathesis(url, _key(fuzz, other), "another workspace's key", config)
    for output in (full, foreign):
        assert "No issues found" in output or " 0 failures" in output or "passed" in output
    assert "Internal Server Error" not in proc.log()
