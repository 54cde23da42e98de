"""What a transaction promises once it commits.

An ``Effects`` collects, inside the transaction that made a change, the history rows
to write and what to do after commit: ring doorbells (step ids), schedule short wake-ups,
tell other runs (a child run to cancel or retry), and announce status changes. None of
it is the only record of anything: a doorbell that is never rung is re-derived by the
reconciler from ``ready`` rows, a child run whose parent step ended is found by
``recovery.settle_child_runs``, and webhook notices come from the history rows.
So a process killed between the commit and ``publish`` loses nothing but a little time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from runs.models import Run, RunEvent
from runs.signals import run_status_changed

from . import rows
from .dispatch import dispatch_steps, dispatch_wakes
from .faults import fault_point

# Flow control's admission (runs.engine.transitions.admit_pending), registered by the engine:
# this module sits below the code that starts runs and steps.
_admitters: list[Callable[[Effects], None]] = []


def on_flush_admit(fn: Callable[[Effects], None]) -> None:
    _admitters[:] = [fn]


@dataclass
class Effects:
    """What a transaction decided to do once it commits."""

    dispatch: list[int] = field(default_factory=list)
    # Doorbells rung again by the reconciler: ahead of the queue (dispatch.URGENT).
    urgent: list[int] = field(default_factory=list)
    countdowns: list[tuple[int, float]] = field(default_factory=list)
    # The run priority of doorbells in ``dispatch`` that have one (flow control; absent: 0).
    priorities: dict[int, int] = field(default_factory=dict)
    # Waiting steps due within a minute get a countdown message; later ones only the sweep.
    wakes: list[tuple[int, float]] = field(default_factory=list)
    history: list[RunEvent] = field(default_factory=list)
    # Hurry-ups for other runs (cancel or retry a child run). Each is also derived from the
    # rows by a reconciler sweep, so losing them to a crash costs one sweep interval.
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    # The fast path: the committing worker may take one new work step itself.
    claim_owner: str = ""
    lease_seconds: float = 30.0
    claimed: Any = None
    # Runs that changed status, for signals (webhooks, waiters).
    status_changes: list[tuple[Any, str]] = field(default_factory=list)
    # Flow control (runs.engine.flow): concurrency keys whose queued runs / steps may be
    # admitted, decided at ``flush`` under the admission lock, after every run lock this
    # transaction takes; and what this transaction queued (its history row is written at
    # flush: "queued" if it still waits, nothing extra if it was admitted at once).
    admit_run_keys: set[str] = field(default_factory=set)
    admit_step_keys: set[str] = field(default_factory=set)
    queued_here: dict[Any, RunEvent] = field(default_factory=dict)
    admitted: int = 0

    def event(self, run_id: Any, kind: str, step_key: str = "", *, actor: str = "", message: str = "",
              data: dict[str, Any] | None = None) -> None:
        self.history.append(RunEvent(run_id=run_id, kind=kind, step_key=step_key, actor=actor,
                                     message=message, data=data or {}))

    def flush(self) -> None:
        """Admit what waits for a freed slot, write the history rows and schedule the publish;
        call last, inside the transaction."""
        if self.admit_run_keys or self.admit_step_keys or self.queued_here:
            for admit in _admitters:
                admit(self)
            self.history.extend(self.queued_here.values())  # queued, and still waiting
            self.queued_here = {}
        if self.history:
            rows.insert(RunEvent, self.history)
            self.history = []
        if self.dispatch or self.urgent or self.countdowns or self.wakes or self.after_commit or self.status_changes:
            transaction.on_commit(self.publish)

    def publish(self) -> None:
        fault_point("before_effects")  # crash tests: committed, nothing after it has happened
        dispatch_steps(self.dispatch, self.countdowns, priorities=self.priorities)
        dispatch_steps(self.urgent, urgent=True)
        dispatch_wakes(self.wakes)
        for fn in self.after_commit:
            fn()
        if self.status_changes:
            fault_point("before_notices")  # crash tests: committed, no receiver has run
            for run_id, status in self.status_changes:
                run_status_changed.send(sender=Run, run_id=run_id, status=status)
