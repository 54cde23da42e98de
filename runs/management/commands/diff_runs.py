from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runs.cli import draw_diff
from runs.services import NotFound, diff_runs


class Command(BaseCommand):
    help = ("Compare two runs: where they first part, and per step what differs in status, input, output, "
            "error, and (llm steps) the model conversation and the tool calls.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run_a", metavar="A", help="the first run's id (a UUID); its order of steps is followed")
        parser.add_argument("run_b", metavar="B", help="the second run's id (a UUID), e.g. a fork of A")
        parser.add_argument("--json", action="store_true",
                            help="machine-readable output (the same body as GET /api/v1/runs/A/diff/B/)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            diff = diff_runs(options["run_a"], options["run_b"])
        except NotFound as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(json.dumps(diff, indent=2, default=str, ensure_ascii=False))
        else:
            self.stdout.write(draw_diff(diff))
