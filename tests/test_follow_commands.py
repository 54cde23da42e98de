"""``start_run --wait --follow`` and ``show_run --follow`` print a streamed LLM answer's text
as it comes (stdout) and the run's history (stderr), in real subprocesses against a real engine."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from providers.models import Provider
from runs.models import Run
from runs.services import start_run
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    make_provider,
)
from tests.support.workers import ROOT, subprocess_env

ANSWER = " ".join(f"token{i}" for i in range(30))


def _workflow(workflow: Any, name: str) -> None:
    Provider.objects.get_or_create(name="fake-follow", defaults=dict(
        kind="fake", model="fake-1", options={"stream_delay_seconds": 0.05, "script": [{"text": ANSWER}]}))
    workflow({"name": name, "steps": [{"name": "draft", "type": "llm", "provider": "fake-follow", "stream": True,
                                       "messages": [{"role": "user", "content": "Write"}]}]})


def _manage(*args: str) -> subprocess.Popen[bytes]:
    # Unbuffered bytes: what the test reads before communicate() is not lost in a reader's buffer.
    return subprocess.Popen([sys.executable, "manage.py", *args], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)


def test_start_run_wait_follow_prints_the_text_while_the_step_is_still_running(engine: Any, workflow: Any,
                                                                               llm_server: Any) -> None:
    make_provider(llm_server, "writer", kind="anthropic", timeout_seconds=30)
    # The model stalls after its first pieces until the test saw the first token printed.
    llm_server.script("writer", {"text": ANSWER, "hang_at": 5, "stream_hang": 30})
    workflow({"name": "follow-start", "steps": [{"name": "draft", "type": "llm", "provider": "writer",
                                                 "stream": True, "messages": [{"role": "user", "content": "Write"}]}]})
    proc = _manage("start_run", "follow-start", "--wait", "--follow", "--timeout", "60")
    assert proc.stdout is not None
    first = b""
    while b"token0" not in first:  # the first word of the answer
        piece = proc.stdout.read(1)
        assert piece, "stdout closed before the first token"
        first += piece
    # The first token was printed while the step was still writing the answer.
    run = Run.objects.order_by("-created_at").first()
    assert run is not None and run.workflow.name == "follow-start"
    assert run.steps.get(key="draft").status == "running"
    llm_server.release()
    rest, raw_err = proc.communicate(timeout=60)
    out, err = (first + rest).decode(), raw_err.decode()
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    assert lines[-1] == str(run.pk)  # the run id, alone on the last line
    assert ANSWER in out
    assert "── draft · round 1 · writer ──" in err
    assert "· run_completed" in err


def test_show_run_follow_prints_the_text_then_the_timeline(engine: Any, workflow: Any) -> None:
    _workflow(workflow, "follow-show")
    run = start_run("follow-show", {}).run
    proc = _manage("show_run", str(run.pk), "--follow")
    raw_out, raw_err = proc.communicate(timeout=60)
    out, err = raw_out.decode(), raw_err.decode()

    assert proc.returncode == 0, err
    assert out.startswith(ANSWER)  # the streamed text first, then the drawn run
    assert "draft" in out.split(ANSWER, 1)[1]
    assert "· run_completed" in err
    output = wait_for_run(run.pk).output
    assert isinstance(output, dict) and output["text"] == ANSWER


def test_follow_needs_wait(db: Any) -> None:
    done = subprocess.run([sys.executable, "manage.py", "start_run", "anything", "--follow"], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--follow needs --wait" in done.stderr
