"""``STEVORA_LOG_FORMAT=json``: a real engine writes one JSON object per log line, and the lines
about a step name its run, step key and attempt."""

from __future__ import annotations

import json
import re
from typing import Any

from runs.services import start_run
from tests.conftest import wait_for_run
from tests.test_configuration import manage

PLAIN_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_an_engine_writes_json_lines_that_name_the_step(fresh_engine: Any, workflow: Any) -> None:
    workflow({"name": "logged", "steps": [
        {"name": "talk", "type": "task", "handler": "test.log_lines"},
        {"name": "again", "type": "task", "handler": "test.log_lines"}]})
    engine = fresh_engine(STEVORA_LOG_FORMAT="json")
    run = wait_for_run(start_run("logged", {}).run.pk)
    assert run.status == "completed", run.error
    engine.stop()
    output = engine.log()

    assert not [line for line in output.splitlines() if PLAIN_LOG_LINE.match(line)], output
    lines = json_lines(output)
    about_run = [line for line in lines if line.get("run_id") == str(run.pk)]
    for key in ("talk", "again"):
        step_logger = [line for line in about_run if line["message"] == f"step logger line {key}"]
        library = [line for line in about_run if line["logger"] == "stevora.test.library"
                   and line["step_key"] == key]
        assert len(step_logger) == 1 and len(library) == 1, lines
        assert step_logger[0]["attempt"] == 1 and library[0]["attempt"] == 1
        assert step_logger[0]["level"] == "INFO" and library[0]["level"] == "WARNING"
        assert step_logger[0]["logger"] == "stevora.step.talk" if key == "talk" else True
    assert all({"time", "level", "logger", "message", "process", "thread"} <= set(line) for line in lines)
    # Lines not about a step carry no step fields.
    assert all("step_key" not in line for line in lines if "run_id" not in line)


def test_an_unknown_log_format_stops_start_up() -> None:
    result = manage("check", STEVORA_LOG_FORMAT="xml")
    assert result.returncode != 0
    assert "STEVORA_LOG_FORMAT must be plain or json, got 'xml'" in result.stderr
