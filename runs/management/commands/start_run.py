from __future__ import annotations

import difflib
import sys
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runs.cli import STATUS_MARK, parse_json_arg
from runs.follow import Follower
from runs.models import DEFAULT_WORKSPACE_SLUG, Run, RunStatus, Workflow
from runs.services import StartError, start_run
from runs.services.workers import stall_hints
from steps.models import StepExecution

EXIT_COMPLETED, EXIT_FAILED, EXIT_TIMEOUT, EXIT_WAITING = 0, 1, 2, 3


class Command(BaseCommand):
    help = ("Start a run. Prints the run id alone on the last line of stdout. With --wait, shows live "
            "progress on stderr and exits 0 completed, 1 failed/cancelled, 2 timed out, 3 waiting on a "
            "person or an event.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", metavar="NAME", help="the workflow's name (load it first with load_workflows)")
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--input", help="run input as a JSON object")
        group.add_argument("--input-file", help="file holding the run input as JSON")
        parser.add_argument("--workflow-version", type=int, help="a specific version (default: latest)")
        parser.add_argument("--idempotency-key", help="the same key returns the same run")
        parser.add_argument("--priority", type=int, default=None,
                            help="-100..100, higher first wherever work waits (default: the workflow's, else 0)")
        parser.add_argument("--wait", action="store_true", help="wait for the run to finish or park")
        parser.add_argument("--follow", action="store_true",
                            help="with --wait: print the run's history on stderr and its LLM steps' streamed "
                                 "text (steps with stream: true) on stdout as they come, instead of the "
                                 "progress line")
        parser.add_argument("--timeout", type=float, default=None,
                            help="with --wait: give up waiting after this many seconds (exit 2; the run goes "
                                 "on). Default: wait forever")

    def handle(self, *args: Any, **options: Any) -> None:
        run_input: Any = {}
        if options["input"] is not None:
            run_input = parse_json_arg(options["input"], "--input")
        elif options["input_file"]:
            path = Path(options["input_file"])
            try:
                text = path.read_text()
            except OSError as exc:
                raise CommandError(f"--input-file: cannot read {path}: {exc.strerror}") from None
            run_input = parse_json_arg(text, f"--input-file {path}")
        if options["follow"] and not options["wait"]:
            raise CommandError("--follow needs --wait")
        if options["timeout"] is not None and options["timeout"] <= 0:
            raise CommandError("--timeout must be a positive number of seconds")
        try:
            result = start_run(options["name"], run_input, version=options["workflow_version"],
                               idempotency_key=options["idempotency_key"], actor="cli",
                               priority=options["priority"])
        except StartError as exc:
            raise CommandError(start_error_text(exc, options["name"])) from None
        run = result.run
        if not result.created:
            self.stderr.write(f"idempotency key matched an existing run ({run.status})")
        if options["wait"]:
            follower = Follower(run.pk, self.stdout, self.stderr) if options["follow"] else None
            code = wait_for(run.pk, options["timeout"], self.stderr, follower)
            self.stdout.write(str(run.pk))
            sys.exit(code)
        self.stdout.write(str(run.pk))


def start_error_text(exc: StartError, name: str) -> str:
    """The error once (not its message and then the same line again as a detail); an unknown
    workflow gets the names it may have meant."""
    if [path for path, _ in exc.errors] != ["workflow"]:
        return str(exc)
    message = exc.errors[0][1]
    known = list(Workflow.objects.filter(workspace__slug=DEFAULT_WORKSPACE_SLUG)
                 .values_list("name", flat=True).distinct().order_by("name")[:1000])
    if name in known:  # the name exists, the asked version does not
        versions = Workflow.objects.filter(workspace__slug=DEFAULT_WORKSPACE_SLUG, name=name).order_by("version")
        return f"{message}\nversions of {name}: {', '.join(str(v) for v in versions.values_list('version', flat=True))}"
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if close:
        return f"{message}\ndid you mean: {', '.join(close)}?"
    if known:
        shown = ", ".join(known[:10]) + (", …" if len(known) > 10 else "")
        return f"{message}\nloaded workflows: {shown}"
    return message


def wait_for(run_id: Any, timeout: float | None, err: Any, follower: Follower | None = None) -> int:
    """Poll the run, drawing one progress line on stderr (or, following, its history and streamed
    text), until it ends or parks."""
    deadline = time.monotonic() + timeout if timeout else None
    tty = (err.isatty() if hasattr(err, "isatty") else False) and follower is None
    last = ""
    interval = 0.05
    next_check = time.monotonic() + 3.0  # then every 2 s: say why nothing moves, once per reason
    told: set[str] = set()
    while True:
        run = Run.objects.get(pk=run_id)
        if follower is not None:
            follower.pump()  # after reading the status: all that came before it is written
            if run.status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.WAITING):
                follower.close()
        rows = list(StepExecution.objects.filter(run_id=run_id).order_by("id").values_list("key", "status"))
        done = sum(1 for _, s in rows if s == "completed")
        current = [k for k, s in rows if s in ("running", "ready", "waiting")]
        marks = "".join(STATUS_MARK.get(s, "?") for _, s in rows)
        line = f"[{run.status}] {done}/{len(rows)} steps done {marks}  {' '.join(current[:3])}"
        if line != last and follower is None:
            if tty:
                err.write("\r\033[K" + line, ending="")
                err.flush()
            else:
                err.write(line)
            last = line
        if run.status == RunStatus.COMPLETED:
            _finish(err, tty)
            return EXIT_COMPLETED
        if run.status in (RunStatus.FAILED, RunStatus.CANCELLED):
            _finish(err, tty)
            if run.error:
                err.write(f"{run.status}: {run.error.get('type')}: {run.error.get('message')}")
            return EXIT_FAILED
        if run.status == RunStatus.WAITING:
            parked = _parked_on_outside(run)
            if parked:
                _finish(err, tty)
                err.write(f"waiting on: {', '.join(parked)}")
                return EXIT_WAITING
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + 2.0
            for hint in stall_hints(run_id):
                if hint not in told:
                    told.add(hint)
                    _finish(err, tty)
                    err.write(hint)
                    last = ""
        if deadline is not None and time.monotonic() > deadline:
            _finish(err, tty)
            if follower is not None:
                follower.close()
            err.write(f"timed out after {timeout}s; the run goes on ({run.status})")
            return EXIT_TIMEOUT
        time.sleep(interval)
        interval = min(interval * 1.5, 0.1 if follower is not None else 0.5)


PARKING_TYPES = ("approval", "external_event")


def _parked_on_outside(run: Run) -> list[str]:
    """Steps (in this run or its child runs) waiting on a person or an event; timers do not count."""
    run_ids = [run.pk]
    frontier = [run.pk]
    while frontier:
        frontier = list(Run.objects.filter(parent_run_id__in=frontier).values_list("id", flat=True))
        run_ids.extend(frontier)
    return list(StepExecution.objects.filter(run_id__in=run_ids, status="waiting", type__in=PARKING_TYPES)
                .values_list("key", flat=True))


def _finish(err: Any, tty: bool) -> None:
    if tty:
        err.write("")
