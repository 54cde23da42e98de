"""``GET /healthz`` says whether the web process reaches its database: 200, or 503 naming why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.db import connection
from django.test import Client

from tests.support.tree import fetch, free_port, stop, wait_for_http
from tests.support.workers import ROOT, subprocess_env


def test_healthz_answers_ok_with_the_database_vendor(db: Any) -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": connection.vendor}


def test_healthz_answers_503_naming_the_error_when_the_database_is_unreachable(tmp_path: Path) -> None:
    port = free_port()
    closed = free_port()  # nothing listens there
    env = subprocess_env(DATABASE_URL=f"postgres://stevora@127.0.0.1:{closed}/stevora", CELERY_BROKER_URL="")
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:  # gunicorn: it starts without a database (runserver checks migrations first)
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "stevora_project.wsgi", "--bind",
                                 f"127.0.0.1:{port}", "--workers", "1"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", proc, log)
        status, content_type, body = fetch(f"http://127.0.0.1:{port}/healthz")
        answer = json.loads(body)
        assert (status, content_type, answer["status"]) == (503, "application/json", "unavailable")
        assert answer["database"].startswith("OperationalError") and str(closed) in answer["database"]
    finally:
        stop(proc)
