"""``manage.py approve APPROVAL_OR_RUN_ID [...] | --workflow NAME | --all-pending
[--reject] [--comment C] [--as USERNAME]``."""

from __future__ import annotations

import getpass
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.services import MAX_BULK, DecisionError, decide, decide_many, pending_ids, resolve
from runs.cli import parse_json_arg


class Command(BaseCommand):
    help = ("Approve (or with --reject, reject) pending approvals: one or several by approval id or run id, "
            "or every pending one of a workflow (--workflow) or of all workflows (--all-pending). "
            "With --as USERNAME the user's permission and approver groups are checked (each refused id is "
            "listed with the reason; the exit status is 1 when any was refused); without it the decision is "
            "recorded as the shell operator (cli:<os user>).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("targets", metavar="APPROVAL_OR_RUN_ID", nargs="*",
                            help="approval numbers (as pending_approvals lists them) or ids of runs with "
                                 "exactly one pending approval; several are decided in bulk")
        parser.add_argument("--workflow", default=None, metavar="NAME",
                            help="decide every pending approval of this workflow (oldest first)")
        parser.add_argument("--all-pending", action="store_true",
                            help=f"decide every pending approval (oldest first, at most {MAX_BULK} per call)")
        parser.add_argument("--reject", action="store_true", help="reject instead of approve")
        parser.add_argument("--comment", default="", help="a comment recorded with the decision")
        parser.add_argument("--content", default=None,
                            help="edited content as JSON (where the step allows edits; one approval only)")
        parser.add_argument("--as", dest="username", default=None, help="decide as this user (checks permissions)")

    def handle(self, *args: Any, **options: Any) -> None:
        user = None
        if options["username"]:
            model = get_user_model()
            try:
                user = model.objects.get(**{model.USERNAME_FIELD: options["username"]})
            except model.DoesNotExist:
                raise CommandError(f"--as: no user named {options['username']!r}") from None
        targets: list[str] = options["targets"]
        by_filter = options["workflow"] is not None or options["all_pending"]
        if targets and by_filter:
            raise CommandError("give approval or run ids, or a filter (--workflow, --all-pending), not both")
        if not targets and not by_filter:
            raise CommandError("give an approval or run id (or several), --workflow NAME or --all-pending")
        operator = f"cli:{_os_user()}"
        if len(targets) == 1:
            self._one(targets[0], user, operator, options)
            return
        if options["content"] is not None:
            raise CommandError("--content edits one approval; decide it on its own")
        try:
            # A number goes to decide_many as it is (an unknown one is refused there, with the rest decided).
            ids = ([int(target) if target.strip().isdigit() else resolve(target).pk for target in targets]
                   if targets else pending_ids(workflow=options["workflow"]))
            results = decide_many(ids, user=user, approve=not options["reject"], comment=options["comment"],
                                  operator=operator)
        except (DecisionError, PermissionDenied) as exc:
            raise CommandError(str(exc)) from None
        verb = "rejected" if options["reject"] else "approved"
        refused = [r for r in results if r.outcome == "refused"]
        for r in refused:
            self.stderr.write(f"approval #{r.id}: refused: {r.reason}")
        self.stdout.write(f"{len(results) - len(refused)} {verb}, {len(refused)} refused")
        if refused:
            raise CommandError(f"{len(refused)} of {len(results)} approvals were refused (listed above)")

    def _one(self, target: str, user: Any, operator: str, options: dict[str, Any]) -> None:
        content = parse_json_arg(options["content"], "--content") if options["content"] is not None else None
        try:
            approval = resolve(target)
            decision = decide(approval.pk, user=user, approve=not options["reject"], comment=options["comment"],
                              content=content, operator=operator)
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
