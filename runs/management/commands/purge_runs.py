from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runs.services import NotFound, PurgeReport, purge_runs


class Command(BaseCommand):
    help = ("Purge finished runs (completed, failed, cancelled) older than their workspace's retention, with "
            "their steps, history, LLM and tool calls, approvals, event matches and settled webhook deliveries, "
            "in batches of one short transaction each. Nothing of an unfinished run is touched, nor a finished "
            "child run whose parent is unfinished. Prints one line per batch and the rows per table at the end. "
            "The same purge runs on a schedule (STEVORA_RETENTION_SWEEP_SECONDS). See docs/operations.md, "
            "'Retention'.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", dest="older_than", type=int, default=None, metavar="DAYS",
                            help="purge runs that finished more than DAYS days ago, whatever the workspace's "
                                 "retention (default: each workspace's retention_days, else "
                                 "STEVORA_RETENTION_DAYS; a workspace with neither is skipped)")
        parser.add_argument("--workspace", default=None, metavar="SLUG",
                            help="only this workspace (default: every workspace)")
        parser.add_argument("--dry-run", action="store_true",
                            help="delete nothing; count what would be deleted, per table")
        parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                            help="runs per transaction (default: STEVORA_RETENTION_BATCH_SIZE, 100)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["older_than"] is not None and options["older_than"] < 0:
            raise CommandError("--older-than must be 0 or more days")
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        verb = "would purge" if options["dry_run"] else "purged"

        def progress(report: PurgeReport, slug: str) -> None:
            self.stderr.write(f"batch {report.batches} ({slug}): {verb} {report.runs} runs so far")

        try:
            report = purge_runs(older_than_days=options["older_than"], workspace=options["workspace"],
                                dry_run=options["dry_run"], batch_size=options["batch_size"], progress=progress)
        except NotFound as exc:
            raise CommandError(str(exc)) from None
        if not report.policies:
            self.stderr.write("no workspace has a retention (set retention_days, STEVORA_RETENTION_DAYS "
                              "or --older-than): nothing to do")
        for slug, cutoff in report.policies:
            self.stderr.write(f"workspace {slug}: runs finished before {cutoff.isoformat()}")
        self.stdout.write(f"{'dry run: ' if report.dry_run else ''}{verb} {report.runs} runs in "
                          f"{report.batches} batches")
        for label in sorted(report.counts):
            self.stdout.write(f"  {label}: {report.counts[label]}")
