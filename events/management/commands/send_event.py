"""``manage.py send_event NAME [--key K] [--payload JSON] [--id ID] [--workspace SLUG]``."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from events.services import EventError, deliver_event
from runs.cli import parse_json_arg


class Command(BaseCommand):
    help = ("Deliver an external event: stored, every workflow whose triggers name it starts a run, and every "
            "waiting step it satisfies completes with it.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", metavar="NAME", help="the event's name, as external_event steps name it")
        parser.add_argument("--key", default=None, help="correlation key (e.g. an order id)")
        parser.add_argument("--payload", default=None, help="event payload as JSON")
        parser.add_argument("--id", dest="event_id", default=None, help="sender's id for deduplication")
        parser.add_argument("--workspace", default=None, help="workspace slug (default: default)")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        payload = parse_json_arg(options["payload"], "--payload") if options["payload"] is not None else None
        try:
            delivery = deliver_event(options["name"], key=options["key"], payload=payload,
                                     event_id=options["event_id"], workspace=options["workspace"])
        except EventError as exc:
            raise CommandError(str(exc)) from None
        event = delivery.event
        if options["json"]:
            self.stdout.write(json.dumps({"event": event.as_output(), "duplicate": delivery.duplicate,
                                          "matched_steps": delivery.matched_step_ids,
                                          "started_runs": delivery.started_runs,
                                          "trigger_problems": delivery.trigger_problems,
                                          "trigger_skipped": delivery.trigger_skipped}, default=str))
            return
        if delivery.duplicate:
            self.stdout.write(f"event #{event.pk} with id {event.event_id!r} was already delivered; ignored")
        else:
            self.stdout.write(f"event #{event.pk} {event.name}[{event.key}] stored; "
                              f"{len(delivery.matched_step_ids)} waiting step(s) completed, "
                              f"{len(delivery.started_runs)} run(s) started by triggers")
            for problem in delivery.trigger_problems:
                self.stderr.write(f"trigger started no run: {problem}")
            for skipped in delivery.trigger_skipped:
                self.stdout.write(f"trigger skipped: {skipped}")
