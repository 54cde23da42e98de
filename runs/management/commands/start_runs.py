"""``manage.py start_runs NAME --file inputs.jsonl [--key-field F] [--batch-size N] [--print-ids]``."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import IO, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runs.definitions import PRIORITY_MAX, PRIORITY_MIN
from runs.services import MAX_BATCH, BatchItem, StartError, check_batch, resolve_workflow, start_runs
from runs.services import NotFound as WorkflowNotFound

from .start_run import start_error_text

_ITEM = re.compile(r"^items\[(\d+)\]")


class Command(BaseCommand):
    help = ("Start many runs of one workflow from a JSON Lines file: one run input (a JSON object) per line. "
            "Every line is checked against the workflow's input schema first; one bad line starts nothing "
            "and is named with its field. Runs then start in batches (one transaction each), with live "
            "progress on stderr.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", metavar="NAME", help="the workflow's name (load it first with load_workflows)")
        parser.add_argument("--file", required=True, metavar="PATH",
                            help="JSON Lines: one run input (a JSON object) per line; '-' reads stdin; "
                                 "blank lines are skipped")
        parser.add_argument("--workflow-version", type=int, help="a specific version (default: latest)")
        parser.add_argument("--key-field", metavar="FIELD", default=None,
                            help="use this field of each input as the run's idempotency key (a repeated run "
                                 "of the file then starts nothing twice)")
        parser.add_argument("--batch-size", type=int, default=1000,
                            help=f"runs per transaction (1 to {MAX_BATCH}, default 1000)")
        parser.add_argument("--priority", type=int, default=None,
                            help="-100..100, higher first wherever work waits (default: the workflow's, else 0)")
        parser.add_argument("--print-ids", action="store_true", help="print each run's id on stdout, in file order")

    def handle(self, *args: Any, **options: Any) -> None:
        size = options["batch_size"]
        if not 1 <= size <= MAX_BATCH:
            raise CommandError(f"--batch-size must be from 1 to {MAX_BATCH}")
        priority = options["priority"]
        if priority is not None and not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise CommandError(f"--priority must be from {PRIORITY_MIN} to {PRIORITY_MAX}")
        lines = self._read(options["file"])
        items: list[BatchItem] = []
        line_of: list[int] = []
        for number, text in lines:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise CommandError(f"line {number}: not valid JSON: {exc.msg} at position {exc.pos}; "
                                   f"nothing was started") from None
            except RecursionError:
                raise CommandError(f"line {number}: nests too deeply to parse; nothing was started") from None
            key = None
            if options["key_field"] is not None:
                raw = value.get(options["key_field"]) if isinstance(value, dict) else None
                if isinstance(raw, bool) or not isinstance(raw, (str, int)) or str(raw) == "":
                    raise CommandError(f"line {number}: input.{options['key_field']}: the --key-field must be a "
                                       f"non-empty string or an integer; nothing was started")
                key = str(raw)
            items.append(BatchItem(value, key))
            line_of.append(number)
        if not items:
            raise CommandError(f"{options['file']}: no inputs (one JSON object per line)")
        try:
            workflow = resolve_workflow(options["name"], version=options["workflow_version"])
        except WorkflowNotFound as exc:
            raise CommandError(start_error_text(StartError(str(exc), [("workflow", str(exc))]),
                                                options["name"])) from None
        # Everything first: one bad line anywhere starts nothing.
        for start in range(0, len(items), MAX_BATCH):
            try:
                check_batch(workflow, items[start:start + MAX_BATCH])
            except StartError as exc:
                raise CommandError(_by_line(exc, line_of, start)) from None
        err = self.stderr
        tty = err.isatty() if hasattr(err, "isatty") else False
        t0 = time.monotonic()
        created = existing = 0
        for start in range(0, len(items), size):
            try:
                results = start_runs(workflow.name, items[start:start + size], workspace=workflow.workspace_id,
                                     version=workflow.version, actor="cli", priority=options["priority"])
            except StartError as exc:  # checked above; only a race (a deleted workflow) gets here
                raise CommandError(f"{_by_line(exc, line_of, start)}\n{created} runs were started before "
                                   f"this batch") from None
            for result in results:
                if result.created:
                    created += 1
                else:
                    existing += 1
                if options["print_ids"]:
                    self.stdout.write(str(result.run.pk))
            done = start + len(results)
            rate = done / max(time.monotonic() - t0, 1e-9)
            line = f"{done}/{len(items)} items: {created} started, {existing} existing ({rate:,.0f}/s)"
            if tty:
                err.write("\r\033[K" + line, ending="")
                err.flush()
            else:
                err.write(line)
        if tty:
            err.write("")
        elapsed = time.monotonic() - t0
        self.stdout.write(f"{created} runs started, {existing} existing (idempotency key) of {workflow} in "
                          f"{elapsed:.2f}s ({len(items) / max(elapsed, 1e-9):,.0f} items/s)")

    def _read(self, name: str) -> list[tuple[int, str]]:
        stream: IO[str]
        if name == "-":
            stream = sys.stdin
        else:
            try:
                stream = Path(name).open(encoding="utf-8")
            except OSError as exc:
                raise CommandError(f"--file: cannot read {name}: {exc.strerror}") from None
        try:
            return [(n, text) for n, text in enumerate(stream, start=1) if text.strip()]
        except UnicodeDecodeError as exc:
            raise CommandError(f"--file: {name} is not UTF-8 text ({exc.reason})") from None
        finally:
            if stream is not sys.stdin:
                stream.close()


def _by_line(exc: StartError, line_of: list[int], offset: int) -> str:
    """``items[3].input.email: …`` as ``line 4: input.email: …`` (the file's own numbers)."""
    def line(match: re.Match[str]) -> str:
        return f"line {line_of[offset + int(match.group(1))]}:"

    parts = [f"{_ITEM.sub(line, path).replace(':.', ': ').rstrip(':')}: {message}" for path, message in exc.errors]
    return "invalid input; nothing was started\n  " + "\n  ".join(parts)
