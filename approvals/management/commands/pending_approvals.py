"""``manage.py pending_approvals [--json] [--as USERNAME] [--limit N] [--after ID]``: what waits for a person.

Filtered and limited in SQL (keyset: ``--after`` the last id of the previous page)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from approvals.models import Approval
from approvals.services import ApprovalNotFound, decidable_by, pending, rows_after
from runs.cli import _fmt_seconds


class Command(BaseCommand):
    help = "List pending approvals, oldest first (with --as USERNAME: only those that user may decide)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.add_argument("--as", dest="username", default=None, help="only what this user may decide")
        parser.add_argument("--limit", type=int, default=200,
                            help="show at most this many, oldest first (default: 200)")
        parser.add_argument("--after", type=int, default=None, metavar="ID",
                            help="the next page: only approvals requested after approval ID (the last one "
                                 "the previous page showed)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        if options["username"]:
            model = get_user_model()
            try:
                user = model.objects.get(**{model.USERNAME_FIELD: options["username"]})
            except model.DoesNotExist:
                raise CommandError(f"--as: no user named {options['username']!r}") from None
            query = decidable_by(user)
        else:
            query = pending().order_by("requested_at", "id")
        if options["after"] is not None:
            try:
                query = rows_after(query, options["after"])
            except ApprovalNotFound as exc:
                raise CommandError(f"--after: {exc}") from None
        rows: list[Approval] = list(query[: options["limit"]])
        now = timezone.now()
        if options["json"]:
            self.stdout.write(json.dumps([{
                "id": a.pk, "run": str(a.run_id), "workflow": a.workflow_name, "step": a.step_key,
                "kind": a.kind, "requested_at": a.requested_at.isoformat(),
                "expires_at": a.expires_at.isoformat() if a.expires_at else None,
                "approvers": {"groups": a.allowed_groups, "users": a.allowed_users},
                "instructions": a.instructions, "content": a.content,
            } for a in rows], indent=2, default=str))
            return
        if not rows:
            self.stdout.write("No pending approvals.")
            return
        header = ["ID", "WORKFLOW / STEP", "RUN", "WAITING", "EXPIRES IN", "APPROVERS"]
        table = [header]
        for a in rows:
            expires = "never" if a.expires_at is None else (
                _fmt_seconds((a.expires_at - now).total_seconds()) if a.expires_at > now else "expired")
            who = ", ".join([*(f"@{g}" for g in a.allowed_groups), *a.allowed_users]) or "anyone allowed"
            what = f"{a.workflow_name} / {a.step_key}" + ("" if a.kind == "step" else f" ({a.kind})")
            table.append([str(a.pk), what, str(a.run_id),
                          _fmt_seconds((now - a.requested_at).total_seconds()), expires, who])
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for row in table:
            self.stdout.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        more = (f" More: --after {rows[-1].pk}" if len(rows) == options["limit"] else "")
        self.stdout.write(f"\n{len(rows)} pending.{more} Decide with: python manage.py approve ID [--reject] "
                          f"[--comment TEXT] [--as USERNAME] "
                          f"(several ids, --workflow NAME or --all-pending decide in bulk)")
