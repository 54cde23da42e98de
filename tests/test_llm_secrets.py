"""Provider keys come from the environment (or NAME_FILE) only: they reach the provider's
server, and appear in no database row and no log line — even when a server echoes them."""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.db import connection

from runs.services import start_run
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    llm_workflow,
    make_provider,
    output_of,
)
from tests.support.workers import ROOT, subprocess_env


def test_no_key_appears_in_any_row_or_log_line(fresh_engine: Any, workflow: Any, llm_server: Any, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    openai_key = "sk-test-" + secrets.token_hex(20)
    anthropic_key = "sk-ant-test-" + secrets.token_hex(20)
    key_file = tmp_path / "anthropic.key"
    key_file.write_text(anthropic_key + "\n")
    make_provider(llm_server, "keyed", kind="openai", api_key_env="STEVORA_TEST_OPENAI_KEY", max_retries=0)
    make_provider(llm_server, "keyed-file", kind="anthropic", api_key_env="STEVORA_TEST_ANTHROPIC_KEY")
    # The first server rejects the key and quotes it back in its error body, as some do.
    llm_server.script("keyed", {"status": 401, "echo_auth": True, "type": "invalid_api_key"})
    llm_server.script("keyed-file", {"status": 500, "echo_auth": True}, {"text": "answered"})
    workflow(llm_workflow("secret", provider="keyed", fallback=["keyed-file"]))
    worker = fresh_engine(STEVORA_TEST_OPENAI_KEY=openai_key, STEVORA_TEST_ANTHROPIC_KEY_FILE=str(key_file),
                          LOG_LEVEL="DEBUG", STEVORA_LOG_LEVEL="DEBUG")
    run = wait_for_run(start_run("secret", {}).run.pk)

    assert run.status == "completed", run.error
    assert output_of(run)["provider"] == "keyed-file"
    # The keys did reach the servers, in each vendor's header.
    assert llm_server.requests("keyed")[0]["headers"]["Authorization"] == f"Bearer {openai_key}"
    assert llm_server.requests("keyed-file")[0]["headers"]["x-api-key"] == anthropic_key

    # Every app whose tables exist (an app still without migrations in the shared tree has none).
    tables = set(connection.introspection.table_names())
    excluded = sorted({m._meta.app_label for m in apps.get_models() if m._meta.db_table not in tables})
    dumped = subprocess.run([sys.executable, "manage.py", "dumpdata", "--indent", "0",
                             *[f"--exclude={label}" for label in excluded]], cwd=ROOT,
                            env=subprocess_env(), capture_output=True, text=True)
    assert dumped.returncode == 0, dumped.stderr[-3000:]
    dump = dumped.stdout
    assert not {"providers", "runs", "steps"} & set(excluded)
    assert "invalid_api_key" in dump and "[redacted]" in dump  # the calls are there, scrubbed
    worker.stop()
    logs = worker.log_path.read_text(errors="replace") + caplog.text
    for key in (openai_key, anthropic_key, openai_key[8:], anthropic_key[12:]):
        assert key not in dump
        assert key not in logs
