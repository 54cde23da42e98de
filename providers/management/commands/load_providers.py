from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from providers.services import ConfigError, load_config, parse_config_text


class Command(BaseCommand):
    help = ("Create or update LLM providers and named chains from a YAML file "
            "(keys stay in the environment: each provider names its key's variable in api_key_env).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="YAML file with 'providers:' and 'chains:'")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"])
        try:
            text = path.read_text()
        except OSError as exc:
            raise CommandError(f"{path}: {exc.strerror or exc}") from None
        try:
            summary = load_config(parse_config_text(text))
        except ConfigError as exc:
            raise CommandError(f"{path}: {exc}") from None
        self.stdout.write(f"providers created: {', '.join(summary.created) or '-'}; "
                          f"updated: {', '.join(summary.updated) or '-'}; chains: {', '.join(summary.chains) or '-'}")
