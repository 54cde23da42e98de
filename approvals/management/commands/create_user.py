"""``manage.py create_user NAME [--superuser] [--group G ...] [--can-decide]
[--password-from-env VAR | --no-password] [--email E] [--exists-ok]``."""

from __future__ import annotations

import getpass
import os
import sys
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.users import UserError, create_user


class Command(BaseCommand):
    help = ("Create a user: --superuser for everything, --can-decide for a reviewer of the approval inbox "
            "(staff, 'Can decide approvals', and viewing approvals and runs), --group to put the user in "
            "groups (created if missing; an approval step's approvers.groups names them). The password is "
            "read from an environment variable (--password-from-env) or asked for in the terminal.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", metavar="NAME", help="the new user's username")
        parser.add_argument("--superuser", action="store_true", help="staff with every permission")
        parser.add_argument("--group", action="append", default=[], metavar="G",
                            help="a group to join (repeat for several); created if missing")
        parser.add_argument("--can-decide", action="store_true",
                            help="may decide approvals in the admin inbox and with manage.py approve --as NAME")
        parser.add_argument("--email", default="", help="the user's e-mail address")
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--password-from-env", metavar="VAR",
                            help="read the password from this environment variable (scripts, containers)")
        source.add_argument("--no-password", action="store_true",
                            help="no usable password (a user for API keys only)")
        parser.add_argument("--exists-ok", action="store_true",
                            help="exit 0, changing nothing, when the user exists already (bootstrap scripts)")

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"]
        if options["exists_ok"] and User.objects.filter(username=username.strip()).exists():
            self.stdout.write(f"user {username!r} exists already; left as it is")
            return
        try:
            created = create_user(username, password=self._password(options), superuser=options["superuser"],
                                  groups=options["group"], can_decide=options["can_decide"], email=options["email"])
        except UserError as exc:
            raise CommandError(str(exc)) from None
        user = created.user
        what = "superuser" if user.is_superuser else ("reviewer (can decide approvals)" if options["can_decide"]
                                                        else "user")
        groups = f" in {', '.join(options['group'])}" if options["group"] else ""
        self.stdout.write(f"created {what} {user.username!r}{groups}")
        for name in created.created_groups:
            self.stderr.write(f"created group {name!r} (it has no permissions of its own; add them in the admin)")

    def _password(self, options: dict[str, Any]) -> str | None:
        if options["no_password"]:
            return None
        var = options["password_from_env"]
        if var:
            value = os.environ.get(var)
            if not value:
                raise CommandError(f"--password-from-env: the environment variable {var} is not set or empty")
            return value
        if not sys.stdin.isatty():
            raise CommandError("no password: pass --password-from-env VAR, or --no-password, "
                               "or run in a terminal to be asked")
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Password (again): "):
            raise CommandError("the two passwords differ; nothing was created")
        return first
