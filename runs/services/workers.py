"""What the engine's workers are doing, for the people waiting on them (``start_run --wait``,
``workers``, the health check)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models import Q

from runs.engine import workers
from runs.models import Worker
from steps import clock
from steps.models import StepExecution, StepStatus

START_HINT = ("start one with `python manage.py runengine` (embedded default), or "
              "`celery -A stevora_project worker -B` beside PostgreSQL and Redis")


@dataclass
class WorkerView:
    name: str
    kind: str
    queue: str
    handlers: list[str]
    started_at: Any
    seen_at: Any
    running: list[str]  # "run_id:step_key" of the steps it holds

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "queue": self.queue, "handlers": self.handlers,
                "started_at": self.started_at.isoformat(), "seen_at": self.seen_at.isoformat(),
                "running": self.running}


def live_workers() -> list[WorkerView]:
    live = workers.live_workers()
    held: dict[str, list[str]] = {}
    for run_id, key, owner in StepExecution.objects.filter(status=StepStatus.RUNNING).values_list(
            "run_id", "key", "lease_owner")[:1000]:
        held.setdefault(owner.rsplit(":", 1)[0], []).append(f"{run_id}:{key}")
    return [WorkerView(w.name, w.kind, w.queue, list(w.handlers or []), w.started_at, w.seen_at, held.get(w.name, []))
            for w in live]


def recent_deaths(hours: float = 24) -> list[Worker]:
    since = clock.now() - timedelta(hours=hours)
    return list(Worker.objects.filter(stop_reason="died", stopped_at__gte=since).order_by("-stopped_at")[:50])


def stall_hints(run_id: Any, *, after_seconds: float = 3.0) -> list[str]:
    """Why a run is not moving, in the user's terms: a step waiting for a worker that has its
    handler, or ready steps that no engine is there to take."""
    hints = []
    for key, state in StepExecution.objects.filter(run_id=run_id, status=StepStatus.WAITING, type="task") \
            .values_list("key", "state"):
        name = (state or {}).get(workers.NEEDS_HANDLER) if isinstance(state, dict) else None
        if name:
            hints.append(f"step {key!r} is waiting for a worker with handler {name!r}: no live worker has it; "
                         f"add the module that defines it to STEVORA_HANDLER_MODULES in the engine's environment")
    now = clock.now()
    stalled = list(StepExecution.objects.filter(
        Q(not_before__isnull=True) | Q(not_before__lte=now), run_id=run_id, status=StepStatus.READY,
        ready_at__lte=now - timedelta(seconds=after_seconds)).values_list("key", flat=True)[:3])
    if stalled:
        live = workers.live_workers()
        if not live:
            hints.append(f"no engine is running, so nothing will take step {stalled[0]!r}: {START_HINT}")
        else:
            queues = sorted({w.queue for w in live})
            hints.append(f"step {stalled[0]!r} has been ready for over {after_seconds:g}s and no worker took it; "
                         f"{len(live)} live worker(s) on queue(s) {', '.join(queues)} — busy, or on another queue?")
    return hints


__all__ = ["START_HINT", "WorkerView", "live_workers", "recent_deaths", "stall_hints"]
