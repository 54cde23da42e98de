"""``bin/demo``'s driver (examples/demo.py) runs the three examples end to end on the embedded
default in a fresh var directory: the pipeline, the agent (drawn with its tool calls and the
fallback) and the approval, approved from the command line; it exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.support.workers import ROOT

pytestmark = pytest.mark.skipif(not settings.IS_EMBEDDED_BROKER, reason="the demo runs on the embedded default")

DROP = {"DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE", "STEVORA_SQLITE_PATH", "STEVORA_VAR_DIR",
        "STEVORA_READY_FILE", "OPENAI_API_KEY", "OPENAI_API_KEY_FILE", "ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY_FILE"}


def test_the_demo_runs_the_pipeline_the_agent_and_the_approval_in_a_fresh_var_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in DROP}
    env["STEVORA_VAR_DIR"] = str(tmp_path / "var")
    done = subprocess.run([sys.executable, "-m", "examples.demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out, err = done.stdout, done.stderr
    assert "demo-pipeline v1  [completed]" in out
    assert "agent-research v1  [completed]" in out
    assert '⚙ search_notes(query="otters tools fur")' in out and "→ fell back to demo-fake" in out
    assert "approval #1 (approval-demo/review) approved by cli:" in out
    assert "approval-demo v1  [completed]" in out
    # The commands a user would type, in order.
    shown = [line for line in err.splitlines() if line.startswith("› python manage.py ")]
    assert [line.split()[3] for line in shown] == [
        "migrate", "runengine", "load_workflows", "load_providers", "start_run", "show_run", "start_run",
        "show_run", "start_run", "pending_approvals", "approve", "show_run"]
    assert (tmp_path / "var" / "stevora.sqlite3").exists() and (tmp_path / "var" / "engine.log").exists()
