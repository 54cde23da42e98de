"""The four control commands share this shape: parse the id, call one service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runs.models import IllegalTransition, Run
from runs.services import NotFound

STATES_DOC = "Run states and the moves between them: docs/operations.md, 'Run and step states'."


class ControlCommand(BaseCommand):
    verb = ""
    service: Callable[..., Run]

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run_id", metavar="RUN_ID", help="the run's id (a UUID, as start_run printed it)")
        parser.add_argument("--as", dest="actor", default="cli",
                            help="who is acting, recorded in the run's history (default: cli)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            run = type(self).service(options["run_id"], actor=options["actor"])
        except NotFound as exc:
            raise CommandError(str(exc)) from None
        except IllegalTransition as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{self.verb} {run.pk}: now {run.status}")
