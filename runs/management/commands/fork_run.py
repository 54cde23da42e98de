from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runs.cli import parse_json_arg
from runs.models import IllegalTransition
from runs.services import NotFound, StartError, fork_run


class Command(BaseCommand):
    help = ("Fork a run: a new run of the same workflow version that keeps the results of the steps the "
            "source finished before it first reached --from-step, and runs from that step (with --input, on "
            "a changed input). The source must be completed, failed, cancelled or paused; it is not changed. "
            "Prints the new run's id on the last line. Run states: docs/operations.md, 'Run and step states'.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run_id", metavar="RUN_ID", help="the source run's id (a UUID)")
        parser.add_argument("--from-step", required=True, metavar="STEP",
                            help="a top-level step the source run reached: it and the steps after it run again")
        parser.add_argument("--input", default=None, metavar="JSON",
                            help="the fork's run input as a JSON object (default: the source run's input)")
        parser.add_argument("--replay", choices=["none", "recorded"], default="none",
                            help="recorded: model turns and tool calls that ask what the source run asked are "
                                 "answered from its record (no cost, no side effect); the first that differs "
                                 "goes live, and everything after it (default: none, all live)")
        parser.add_argument("--as", dest="actor", default="cli",
                            help="who is acting, recorded in both runs' history (default: cli)")

    def handle(self, *args: Any, **options: Any) -> None:
        run_input = parse_json_arg(options["input"], "--input") if options["input"] is not None else None
        try:
            fork = fork_run(options["run_id"], from_step=options["from_step"], run_input=run_input,
                            actor=options["actor"], replay=options["replay"])
        except (NotFound, IllegalTransition, StartError) as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"forked run {options['run_id']} at step {options['from_step']!r}")
        self.stdout.write(str(fork.pk))
