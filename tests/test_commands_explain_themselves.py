"""Commands explain themselves: --help says what each state allows (no pointer to a document
outside the repository), every argument has help, an unknown workflow is named once with the
names it may have meant, and show_run prints non-ASCII text as it is."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command, get_commands, load_command_class
from django.core.management.base import CommandError

from runs.services import load_workflow, start_run
from tests.conftest import wait_for_run
from tests.support.workers import ROOT, subprocess_env

PROJECT_APPS = {"runs", "steps", "approvals", "events", "providers", "api", "webhooks"}


def help_of(name: str) -> str:
    """The text ``manage.py NAME --help`` prints (the command's own argparse parser)."""
    app = get_commands()[name]
    return load_command_class(app, name).create_parser("manage.py", name).format_help()


def project_commands() -> list[str]:
    return sorted(name for name, app in get_commands().items() if app in PROJECT_APPS)


def test_control_commands_say_which_states_they_accept_and_point_into_the_repository() -> None:
    expected = {"cancel_run": "pending, running, waiting or paused", "pause_run": "pending, running or waiting",
                "resume_run": "Resume a paused run", "retry_run": "Retry a failed run"}
    for name, rule in expected.items():
        text = " ".join(help_of(name).split())
        assert "DESIGN" not in text, name
        assert rule in text and "refused" in text, name
        assert "docs/operations.md" in text and (ROOT / "docs" / "operations.md").exists()
        assert "RUN_ID the run's id" in text
    states = (ROOT / "docs" / "operations.md").read_text()
    for name in expected:
        assert f"| `{name}` |" in states  # the state table the help points to has a row for it


def test_every_argument_of_every_project_command_has_help() -> None:
    commands = project_commands()
    assert {"start_run", "show_run", "fork_run", "runengine", "pending_approvals", "approve"} <= set(commands)
    missing = []
    for name in commands:
        app = get_commands()[name]
        parser = load_command_class(app, name).create_parser("manage.py", name)
        for action in parser._actions:
            if not action.help and action.dest != "help":
                missing.append(f"{name} {action.dest}")
    assert missing == []


def test_specific_help_texts_say_the_defaults() -> None:
    assert "Default: wait forever" in " ".join(help_of("start_run").split())
    assert "--loglevel {DEBUG,INFO,WARNING,ERROR,CRITICAL}" in help_of("runengine")
    assert "default: WARNING" in " ".join(help_of("runengine").split())
    assert "show at most this many, oldest first (default: 200)" in " ".join(help_of("pending_approvals").split())


def test_an_unknown_workflow_is_named_once_with_what_it_may_have_meant(transactional_db: Any) -> None:
    for name in ("review-flow", "reviews-digest", "billing"):
        load_workflow({"name": name, "steps": [{"name": "a", "type": "task", "handler": "noop"}]})
    done = subprocess.run([sys.executable, "manage.py", "start_run", "review-flwo"], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("no workflow named 'review-flwo'") == 1, done.stderr
    assert "did you mean: review-flow" in done.stderr and "billing" not in done.stderr
    with pytest.raises(CommandError) as far:
        call_command("start_run", "zzzzzz")
    assert str(far.value).count("no workflow named") == 1
    assert "loaded workflows: billing, review-flow, reviews-digest" in str(far.value)
    with pytest.raises(CommandError) as version:
        call_command("start_run", "billing", "--workflow-version", "7")
    assert str(version.value) == ("no workflow named 'billing v7'; load it first with load_workflows\n"
                                  "versions of billing: 1")


def test_show_run_prints_non_ascii_as_it_is(engine: Any, workflow: Any) -> None:
    workflow({"name": "accents", "steps": [{"name": "say", "type": "task", "handler": "echo",
                                            "config": {"title": "{{ input.title }}"}}]})
    run = wait_for_run(start_run("accents", {"title": "tides — été"}).run.pk)
    assert run.status == "completed", run.error
    done = subprocess.run([sys.executable, "manage.py", "show_run", str(run.pk), "--json"], cwd=ROOT,
                          env=subprocess_env(PYTHONIOENCODING="utf-8"), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    raw = done.stdout.decode("utf-8")
    assert "tides — été" in raw and "\\u2014" not in raw and "\\u00e9" not in raw
    assert json.loads(raw)["input"] == {"title": "tides — été"}
    drawn = StringIO()
    call_command("show_run", str(run.pk), stdout=drawn)
    assert 'output: {"title": "tides — été"}' in drawn.getvalue() and "\\u2014" not in drawn.getvalue()


def test_load_workflows_refuses_a_template_naming_a_missing_step_with_its_path(
        transactional_db: Any, tmp_path: Path) -> None:
    bad = tmp_path / "typo.yaml"
    bad.write_text("name: typo\nsteps:\n  - {name: fetch, type: task, handler: noop}\n"
                   "  - name: use\n    type: task\n    handler: echo\n"
                   "    config: {x: '{{ steps.fetc.output.x }}', y: '{{ steps.aa.output }}'}\n")
    with pytest.raises(CommandError) as info:
        call_command("load_workflows", str(bad))
    text = str(info.value)
    assert str(bad) in text and "nothing was stored" in text
    assert "steps[1].config.x: steps.fetc: no step named 'fetc' in this workflow; did you mean 'fetch'?" in text
    assert "steps[1].config.y: steps.aa: no step named 'aa' in this workflow (steps: fetch, use)" in text
