"""``manage.py purge_events``: delete external events past their retention window."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from events.services import purge_expired_events


class Command(BaseCommand):
    help = "Delete stored external events whose retention (STEVORA EVENT_RETENTION_SECONDS) has passed."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"{purge_expired_events()} expired event row(s) deleted")
