"""``manage.py approve APPROVAL_OR_RUN_ID [--reject] [--comment C] [--as USERNAME]``."""

from __future__ import annotations

import getpass
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.services import DecisionError, decide, resolve
from runs.cli import parse_json_arg


class Command(BaseCommand):
    help = ("Approve (or with --reject, reject) a pending approval, by approval id or by run id. "
            "With --as USERNAME the user's permission and approver groups are checked; without it the "
            "decision is recorded as the shell operator (cli:<os user>).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("target", metavar="APPROVAL_OR_RUN_ID",
                            help="an approval's number (as pending_approvals lists it) or the id of a run with "
                                 "exactly one pending approval")
        parser.add_argument("--reject", action="store_true", help="reject instead of approve")
        parser.add_argument("--comment", default="", help="a comment recorded with the decision")
        parser.add_argument("--content", default=None, help="edited content as JSON (where the step allows edits)")
        parser.add_argument("--as", dest="username", default=None, help="decide as this user (checks permissions)")

    def handle(self, *args: Any, **options: Any) -> None:
        user = None
        if options["username"]:
            model = get_user_model()
            try:
                user = model.objects.get(**{model.USERNAME_FIELD: options["username"]})
            except model.DoesNotExist:
                raise CommandError(f"--as: no user named {options['username']!r}") from None
        content = parse_json_arg(options["content"], "--content") if options["content"] is not None else None
        try:
            approval = resolve(options["target"])
            decision = decide(approval.pk, user=user, approve=not options["reject"], comment=options["comment"],
                              content=content, operator=f"cli:{_os_user()}")
        except (DecisionError, PermissionDenied) as exc:
            raise CommandError(str(exc)) from None
        verb = "approved" if decision.output["approved"] else "rejected"
        self.stdout.write(f"approval #{approval.pk} ({approval.workflow_name}/{approval.step_key}) {verb} by "
                          f"{decision.output['decided_by']}; run {approval.run_id} resumes")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"
