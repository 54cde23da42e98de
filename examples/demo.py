"""The demo behind ``bin/demo`` and ``bin/demo-approval``, in one process.

Each step is the management command a user would type (shown with a ``›``), run here with
``call_command`` so Django starts once instead of once per command (a dozen starts were
most of the demo's time). The engine is what a user would start too: ``manage.py runengine``
in its own process. Its process starts with the demo's and loads Django while the demo runs
``migrate``; the engine itself starts when the tables exist.

    python -m examples.demo                    # demo-pipeline, agent-research, approval-demo
    python -m examples.demo --approval         # approval-demo only (bin/demo-approval)
    python -m examples.demo --approval --manual  # leave the decision to you
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def command(name: str, *args: Any, shown: str = "", quiet: bool = False, **options: Any) -> tuple[int, str]:
    """Run one management command; returns (exit code, its stdout). ``shown`` is the command line echoed."""
    from django.core.management import call_command
    from django.core.management.base import CommandError

    if shown:
        say(f"› python manage.py {shown}")
    out = io.StringIO()
    code = 0
    try:
        call_command(name, *args, stdout=out, **options)
    except SystemExit as exc:  # start_run --wait reports the run's outcome as its exit status
        code = exc.code if isinstance(exc.code, int) else 1
    except CommandError as exc:
        say(f"{name}: {exc}")
        code = 1
    text = out.getvalue()
    if not quiet and text:
        sys.stdout.write(text)
        sys.stdout.flush()
    return code, text


def start_engine() -> subprocess.Popen[bytes]:
    """``runengine`` in its own process; it starts Django now and the engine when told (after migrate)."""
    with (var_dir() / "engine.log").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "examples.demo", "--engine-when-told"], cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)


def var_dir() -> Path:
    """Where settings put the SQLite database (STEVORA_VAR_DIR or var/), known before Django starts."""
    path = Path(os.environ.get("STEVORA_VAR_DIR") or ROOT / "var")
    path.mkdir(parents=True, exist_ok=True)
    return path


def go(engine: subprocess.Popen[bytes]) -> None:
    say(f"› python manage.py runengine        (worker + reconciler + timers in one process; "
        f"log: {var_dir() / 'engine.log'})")
    assert engine.stdin is not None
    engine.stdin.write(b"go\n")
    engine.stdin.flush()


def engine_when_told() -> int:
    """The engine process: Django and the engine's modules load while the demo migrates the
    database; ``runengine`` starts on "go" from the demo (its tables exist by then)."""
    import django

    django.setup()
    from django.core.management import call_command

    import runs.management.commands.runengine  # noqa: F401  (load it now, not after "go")

    if sys.stdin.readline().strip() != "go":
        return 0  # the demo stopped before migrate finished
    call_command("runengine")
    return 0


def start_and_wait(name: str, run_input: dict[str, Any], timeout: float) -> tuple[int, str]:
    text = json.dumps(run_input)
    code, out = command("start_run", name, input=text, wait=True, timeout=timeout, quiet=True,
                        shown=f"start_run {name} --input '{text}' --wait")
    lines = out.strip().splitlines()
    return code, (lines[-1] if lines else "")


def run_status(run_id: str) -> str:
    _, out = command("show_run", run_id, json=True, quiet=True)
    return str(json.loads(out)["status"]) if out else "unknown"


def pipeline_and_agent() -> int:
    code, run_id = start_and_wait("demo-pipeline", {"topic": "llamas"}, 60)
    if run_id:
        say("")
        command("show_run", run_id, shown=f"show_run {run_id}")
    say("")
    say("› agent-research: LLM steps with tools (the scripted fake provider offline,")
    say("  the real model with fallback when OPENAI_API_KEY or ANTHROPIC_API_KEY is set)")
    agent_code, agent_id = start_and_wait("agent-research", {"topic": "otters"}, 180)
    if agent_id:
        say("")
        command("show_run", agent_id, shown=f"show_run {agent_id}")
    return code or agent_code


def approval(manual: bool) -> int:
    say("› approval-demo: the run waits (holding no worker) until a person decides")
    code, run_id = start_and_wait("approval-demo", {"topic": "otters"}, 60)
    if code != 3:  # anything but "waiting on a person" is a failure of the demo
        if run_id:
            command("show_run", run_id)
        return code or 1
    _, out = command("show_run", run_id, json=True, quiet=True)
    draft = next(s for s in json.loads(out)["steps"] if s["name"] == "draft")
    say("")
    sys.stdout.write(draft["output"]["how_to_approve"] + "\n\n")
    command("pending_approvals", shown="pending_approvals")
    sys.stdout.write("\n")
    if manual:
        say("› waiting for your decision (Ctrl-C to stop; the run keeps waiting in the database)")
        while run_status(run_id) == "waiting":
            time.sleep(2)
    else:
        decided, _ = command("approve", run_id, comment="lovely otters",
                             shown=f"approve {run_id} --comment 'lovely otters'")
        if decided:
            return decided
    deadline = time.monotonic() + 30  # the run moves on after the decision; show it finished
    while run_status(run_id) not in ("completed", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.1)
    say("")
    command("show_run", run_id, shown=f"show_run {run_id}")
    return 0 if run_status(run_id) == "completed" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--approval", action="store_true", help="only the approval demo")
    parser.add_argument("--manual", action="store_true", help="with --approval: leave the decision to you")
    parser.add_argument("--engine-when-told", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stevora_project.settings")
    os.environ.setdefault("STEVORA_HANDLER_MODULES", "examples.handlers")
    if args.engine_when_told:
        return engine_when_told()
    # The engine's process starts Django while this one does and migrates (seconds each on a fresh .venv).
    engine = start_engine()
    import django

    django.setup()
    try:
        command("migrate", verbosity=0, shown="migrate")
        go(engine)
        _load(args.approval)
        if args.approval:
            return approval(args.manual)
        code = pipeline_and_agent()
        say("")
        approval_code = approval(manual=False)
        return code or approval_code
    finally:
        assert engine.stdin is not None
        engine.stdin.close()
        engine.terminate()
        try:
            engine.wait(10)
        except subprocess.TimeoutExpired:
            engine.kill()
            engine.wait()


def _load(approval_only: bool) -> None:
    """Load the example workflows (and, for the agent, the demo providers); summaries go to stderr."""
    _, out = command("load_workflows", "examples/", shown="load_workflows examples/", quiet=True)
    sys.stderr.write(out)
    if not approval_only:
        _, out = command("load_providers", "providers/demo-providers.yaml",
                         shown="load_providers providers/demo-providers.yaml", quiet=True)
        sys.stderr.write(out)


if __name__ == "__main__":
    sys.exit(main())
