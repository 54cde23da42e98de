from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from runs.services.workers import START_HINT, live_workers, recent_deaths


class Command(BaseCommand):
    help = ("List the engine's live workers (each process that runs steps), the handlers each has and "
            "the steps each is running, and the workers that died in the last day.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args: Any, **options: Any) -> None:
        live = live_workers()
        dead = recent_deaths()
        if options["json"]:
            self.stdout.write(json.dumps({
                "live": [w.as_json() for w in live],
                "died": [{"name": w.name, "stopped_at": w.stopped_at.isoformat() if w.stopped_at else None}
                         for w in dead],
            }, indent=2, ensure_ascii=False))
            return
        if not live:
            self.stdout.write(f"no live worker: {START_HINT}")
        now = timezone.now()
        for w in live:
            age = (now - w.started_at).total_seconds()
            self.stdout.write(f"● {w.name}  {w.kind}, queue {w.queue or '-'}, up {_span(age)}, "
                              f"seen {_span((now - w.seen_at).total_seconds())} ago")
            self.stdout.write(f"    running: {', '.join(w.running) or 'nothing'}")
            self.stdout.write(f"    handlers ({len(w.handlers)}): {', '.join(w.handlers) or 'none'}")
        if dead:
            self.stdout.write(f"died in the last day ({len(dead)}): "
                              + ", ".join(f"{w.name} at {w.stopped_at:%H:%M:%S}" for w in dead[:10]))


def _span(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
