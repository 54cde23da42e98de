"""Settings come from the environment, strictly; handlers are discovered and checked."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from steps.builtin import http_request
from steps.handlers import PermanentError, RetryableError, StepContext, registry
from tests.support.workers import ROOT, subprocess_env

# The same in every backend: runs in the embedded pass only (bin/test).
pytestmark = pytest.mark.backend_independent


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**subprocess_env(), "DJANGO_SETTINGS_MODULE": "stevora_project.settings", **env},
                          timeout=60)


@pytest.mark.parametrize("variable, value, expected", [
    ("STEVORA_LEASE_SECONDS", "soon", "STEVORA_LEASE_SECONDS must be a number, got 'soon'"),
    ("STEVORA_LEASE_SECONDS", "0", "STEVORA_LEASE_SECONDS must be at least 0.5"),
    ("STEVORA_RECONCILE_SECONDS", "-1", "STEVORA_RECONCILE_SECONDS must be at least"),
    ("STEVORA_MAX_RECOVERIES", "many", "STEVORA_MAX_RECOVERIES must be an integer, got 'many'"),
    ("STEVORA_HTTP_ALLOW_PRIVATE", "perhaps", "STEVORA_HTTP_ALLOW_PRIVATE must be one of"),
    ("DATABASE_URL", "mysql://u@h/db", "DATABASE_URL must be a postgres:// (or sqlite://) URL"),
    ("CELERY_BROKER_URL", "kafka://h", "CELERY_BROKER_URL must be a redis:// or amqp:// (RabbitMQ) URL"),
    ("STEVORA_HANDLER_MODULES", "no_such_module_here", "STEVORA_HANDLER_MODULES: cannot import 'no_such_module_here'"),
    ("STEVORA_DB_PREPARED_STATEMENTS", "sometimes", "STEVORA_DB_PREPARED_STATEMENTS must be one of"),
])
def test_a_bad_setting_stops_start_up_naming_the_variable(variable: str, value: str, expected: str) -> None:
    result = manage("check", **{variable: value})
    assert result.returncode != 0
    assert expected in result.stderr


@pytest.mark.parametrize("value, threshold", [(None, "2147483647"), ("true", "2147483647"), ("false", "None")])
def test_prepared_statements_are_asked_for_by_name_unless_turned_off(value: str | None, threshold: str) -> None:
    # Only settings are read: no connection is made to this database.
    env = {"DATABASE_URL": "postgres://nobody@127.0.0.1:5432/not_used"}
    if value is not None:
        env["STEVORA_DB_PREPARED_STATEMENTS"] = value
    result = manage("shell", "-c", "from django.conf import settings; "
                    "print(settings.DATABASES['default']['OPTIONS']['prepare_threshold'])", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == threshold


def test_secrets_may_come_from_a_file(tmp_path: Any) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    result = manage("shell", "-c", "from django.conf import settings; print(settings.SECRET_KEY)",
                    SECRET_KEY="", SECRET_KEY_FILE=str(secret))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "from-a-file"


def test_handlers_are_discovered_from_the_handler_modules_setting() -> None:
    assert "test.ledger" in registry  # tests.handlers, named by STEVORA_HANDLER_MODULES
    assert "demo.plan" in registry  # examples.handlers
    assert {"http.request", "noop", "echo"} <= set(registry.names())


def test_registering_two_functions_under_one_name_is_refused() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from steps.handlers import handler

    with pytest.raises(ImproperlyConfigured, match="registered twice"):
        @handler("test.ledger")
        def another(ctx: StepContext) -> None:
            return None


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        # Recorded before answering: the client may read the answer before this thread goes on.
        type(self).seen_keys.append(self.headers.get("Idempotency-Key"))
        status = 503 if self.path == "/busy" else 200
        body = b'{"hello": "world"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    seen_keys: list[str | None] = []

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def local_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _ctx(config: Any) -> StepContext:
    import logging

    return StepContext(run_id="r", step="fetch", key="fetch", attempt=1, idempotency_key="r:fetch:1",
                       step_idempotency_key="r:fetch", input={}, config=config,
                       log=logging.LoggerAdapter(logging.getLogger("test"), {}))


def test_http_request_refuses_loopback_addresses_by_default(local_server: str) -> None:
    with pytest.raises(PermanentError, match="a loopback address, not globally routable"):
        http_request(_ctx({"url": local_server + "/"}))


def test_http_request_reaches_loopback_when_allowed_and_sends_an_idempotency_key(local_server: str) -> None:
    from django.conf import settings

    with override_settings(STEVORA={**settings.STEVORA, "HTTP_ALLOW_PRIVATE": True}):
        out = http_request(_ctx({"url": local_server + "/"}))
        assert out["status"] == 200 and out["body"] == {"hello": "world"}
        assert _Handler.seen_keys[-1] == "r:fetch"
        with pytest.raises(RetryableError, match="503"):
            http_request(_ctx({"url": local_server + "/busy"}))


def test_http_request_names_a_missing_url() -> None:
    with pytest.raises(PermanentError, match="config.url"):
        http_request(_ctx({}))
