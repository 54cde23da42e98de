"""``manage.py schedules [--pause ID | --resume ID] [--workspace SLUG] [--json]``."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runs.errors import NotFound
from runs.models import Workspace
from schedules import services


class Command(BaseCommand):
    help = ("List the schedules (cron / every_seconds triggers of the latest workflow versions) with their "
            "next fire time, or pause or resume one.")

    def add_arguments(self, parser: CommandParser) -> None:
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--pause", metavar="ID", type=int, default=None,
                            help="pause schedule ID: it fires nothing until resumed")
        action.add_argument("--resume", metavar="ID", type=int, default=None,
                            help="resume schedule ID from its first tick after now (no burst for the ticks "
                                 "missed while paused)")
        parser.add_argument("--workspace", default=None, metavar="SLUG",
                            help="only this workspace's schedules (default: all workspaces)")
        parser.add_argument("--json", action="store_true", help="print JSON (a list, or the changed schedule)")

    def handle(self, *args: Any, **options: Any) -> None:
        workspace = None
        if options["workspace"]:
            workspace = Workspace.objects.filter(slug=options["workspace"]).first()
            if workspace is None:
                raise CommandError(f"--workspace: no workspace {options['workspace']!r}")
        target = options["pause"] if options["pause"] is not None else options["resume"]
        if target is not None:
            change = services.pause_schedule if options["pause"] is not None else services.resume_schedule
            try:
                schedule, changed = change(target, workspace=workspace, actor="manage.py schedules")
            except NotFound as exc:
                raise CommandError(str(exc)) from None
            if options["json"]:
                self.stdout.write(json.dumps({**services.as_json(schedule), "changed": changed}))
                return
            verb = "paused" if options["pause"] is not None else "resumed"
            state = f"{verb}" if changed else f"already {'paused' if schedule.paused else 'active'}"
            self.stdout.write(f"schedule {schedule.pk} ({schedule}) {state}; "
                              f"next fire at {schedule.next_fire_at.isoformat()}")
            return
        rows = [services.as_json(s) for s in services.schedules_of(workspace).order_by("workflow_name",
                                                                                        "trigger_index")]
        if options["json"]:
            self.stdout.write(json.dumps(rows))
            return
        if not rows:
            self.stdout.write("no schedules (declare triggers: in a workflow definition)")
            return
        self.stdout.write(f"{'ID':>5}  {'WORKFLOW':<24} {'TRIGGER':>7}  {'SCHEDULE':<28} {'CATCH_UP':<8} "
                          f"{'STATUS':<7} NEXT FIRE")
        for row in rows:
            timing = (f"every {row['every_seconds']}s" if row["kind"] == "every"
                      else f"{row['cron']} ({row['timezone']})")
            self.stdout.write(f"{row['id']:>5}  {row['workflow']:<24} {row['trigger']:>7}  {timing:<28} "
                              f"{row['catch_up']:<8} {row['status']:<7} {row['next_fire_at']}")
