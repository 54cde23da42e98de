from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runs.cli import draw_timeline, run_as_json
from runs.follow import Follower
from runs.models import Run, RunStatus
from runs.services import NotFound, get_run


class Command(BaseCommand):
    help = "Show a run: a drawn timeline of its steps, or --json for scripts."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run_id", metavar="RUN_ID", help="the run's id (a UUID, as start_run printed it)")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("--follow", action="store_true",
                            help="first print the run's history (stderr) and its LLM steps' streamed text "
                                 "(stdout) as they come, until the run is completed, failed or cancelled; "
                                 "then show it")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            run = get_run(options["run_id"])
        except NotFound as exc:
            raise CommandError(str(exc)) from None
        if options["follow"]:
            follower = Follower(run.pk, self.stdout, self.stderr)
            while True:
                status = Run.objects.filter(pk=run.pk).values_list("status", flat=True).get()
                follower.pump()
                if status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED):
                    follower.close()
                    break
                time.sleep(0.1)
            run = get_run(options["run_id"])
        if options["json"]:
            self.stdout.write(json.dumps(run_as_json(run), indent=2, default=str, ensure_ascii=False))
        else:
            self.stdout.write(draw_timeline(run))
