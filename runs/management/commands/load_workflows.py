from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runs.definitions import DefinitionError
from runs.services import definition_files, load_workflow_text


class Command(BaseCommand):
    help = "Validate and store workflow definitions (YAML or JSON files, or folders of them)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            files = definition_files(options["paths"])
        except FileNotFoundError as exc:
            raise CommandError(str(exc)) from None
        if not files:
            raise CommandError("no .yaml, .yml or .json files found in " + ", ".join(options["paths"]))
        failures = []
        for path in files:
            try:
                result = load_workflow_text(path.read_text(), source=str(path))
            except DefinitionError as exc:
                failures.append(str(exc))
                continue
            note = "" if result.created else " (unchanged)"
            self.stdout.write(f"{result.workflow.name} v{result.workflow.version}{note}")
        if failures:
            raise CommandError("\n".join(failures))
