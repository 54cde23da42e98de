"""``manage.py create_api_key --user NAME [--workspace SLUG] [--name TEXT] [--rate 120/min]``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from api.services import ApiKeyError, create_key
from runs.models import Workspace


class Command(BaseCommand):
    help = ("Create an API key bound to a workspace and a user (whose permissions it carries). "
            "The key is printed once on stdout; only its hash is stored.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="username whose permissions the key carries")
        parser.add_argument("--workspace", default="default", help="workspace slug (default: default)")
        parser.add_argument("--name", default="", help="what the key is for (default: the username)")
        parser.add_argument("--rate", default="", help="rate limit, e.g. 120/min (default: STEVORA_API_RATE)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["workspace"] == "default":
            Workspace.default()
        try:
            new = create_key(name=options["name"] or f"{options['user']} key", user=options["user"],
                             workspace=options["workspace"], rate=options["rate"])
        except ApiKeyError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"created key {new.key.prefix} for {new.key.user} in workspace {new.key.workspace}; "
                          "store it now, it will not be shown again:")
        self.stdout.write(new.plaintext)
