from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from runs.definitions import DefinitionError, parse_text, validate
from runs.services import definition_files, load_workflow
from runs.services.definitions import HandlerCheck


class Command(BaseCommand):
    help = "Validate and store workflow definitions (YAML or JSON files, or folders of them)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH",
                            help="a .yaml, .yml or .json definition, or a folder searched for them")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            files = definition_files(options["paths"])
        except FileNotFoundError as exc:
            raise CommandError(str(exc)) from None
        if not files:
            raise CommandError("no .yaml, .yml or .json files found in " + ", ".join(options["paths"]))
        # All or nothing: a deploy that loads a folder must not end half-updated.
        failures, documents = [], []
        for path in files:
            try:
                document = parse_text(path.read_text(), source=str(path))
                check = HandlerCheck(warn=True)
                validate(document, source=str(path), handler_exists=check)
                for name in check.elsewhere:
                    self.stderr.write(f"warning: {path}: handler {name!r} is not registered in this process (is its "
                                      f"module in STEVORA_HANDLER_MODULES here?); live workers have it")
                for name in check.not_on_workers:
                    self.stderr.write(f"warning: {path}: no live worker has handler {name!r}: its steps will wait "
                                      f"for a worker that has it (add its module to the workers' "
                                      f"STEVORA_HANDLER_MODULES)")
            except DefinitionError as exc:
                failures.append(str(exc))
                continue
            except (OSError, UnicodeDecodeError) as exc:
                failures.append(f"{path}: cannot read: {exc}")
                continue
            documents.append((path, document))
        if failures:
            raise CommandError("\n".join(failures) + "\nnothing was stored")
        with transaction.atomic():
            results = [load_workflow(document, source=str(path)) for path, document in documents]
        for result in results:
            note = "" if result.created else " (unchanged)"
            self.stdout.write(f"{result.workflow.name} v{result.workflow.version}{note}")
