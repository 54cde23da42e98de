"""One row per visit of a step in a run, with its attempts and its lease."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class StepStatus(models.TextChoices):
    """Step state machine (DESIGN §3)::

        pending -> ready -> running -> completed | failed | waiting | skipped | cancelled
        running -> ready            (retry after backoff, or lease expired: recovery)
        waiting -> completed | failed
        waiting -> ready            (a task step parked until a live worker has its handler)
        failed  -> ready            (run retried from this step)

        queued  -> ready            (admitted: a concurrency slot of its key is free)
        failed|cancelled|waiting -> queued   (put back to ready while its key is full)

    ``pending`` is a map item held back by ``max_concurrency``; ``queued`` a work step
    with ``concurrency`` whose key had no free slot (no message, no worker: it is made
    ready when a holder ends, runs.engine.flow). Any non-terminal step becomes
    ``cancelled`` when its run is cancelled.
    """

    PENDING = "pending"
    QUEUED = "queued"
    READY = "ready"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


STEP_TERMINAL = (StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED)
STEP_OPEN = (StepStatus.PENDING, StepStatus.QUEUED, StepStatus.READY, StepStatus.RUNNING, StepStatus.WAITING)
# Steps that hold a slot of their concurrency key.
STEP_HOLDING = (StepStatus.READY, StepStatus.RUNNING)


class StepExecution(models.Model):
    """A visit of a step: ``draft``, ``draft#2`` for a loop's second visit, ``gather[3]``
    for a map item. ``name`` is the step's name in the definition (``gather[]`` for map
    items); the pair (run, key) is unique, so a step result can be recorded only once.
    """

    # Indexed by step_unique_key_per_run (run, key): a run's steps are found through it (and
    # sorted by id, a few hundred rows at most but for big maps). Every other index on
    # run_id would be one more entry to write at every step insert and update.
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="steps", db_index=False)
    key = models.CharField(max_length=255)
    name = models.CharField(max_length=200)
    type = models.CharField(max_length=32)
    # Fan-out children (parallel branch steps, map items) point at their parent step.
    # Indexed only where set (step_parent_idx): most steps are top-level.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children",
                               db_index=False)
    branch = models.CharField(max_length=200, blank=True, default="")
    item_index = models.IntegerField(null=True, blank=True)
    visit = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=16, choices=StepStatus.choices, default=StepStatus.READY)
    # Claims so far (monotonic: part of each attempt's idempotency key).
    attempt = models.PositiveIntegerField(default=0)
    # Failed attempts counted against the retry policy (lease recoveries do not count).
    failures = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=1)
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    # Executor-owned state: join bookkeeping, map items, agent checkpoints.
    state = models.JSONField(default=dict, blank=True)
    lease_owner = models.CharField(max_length=200, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    not_before = models.DateTimeField(null=True, blank=True)
    wake_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    recovery_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    # Flow control (runs.engine.flow): its run's priority, and its rendered concurrency key
    # ("" when the step declares none).
    priority = models.SmallIntegerField(default=0)
    concurrency_key = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "key"], name="step_unique_key_per_run"),
        ]
        indexes = [
            # runs.reconciler: ready steps whose doorbell may be lost.
            models.Index(fields=["not_before"], condition=Q(status="ready"), name="step_ready_idx"),
            # runs.reconciler: running steps whose lease expired.
            models.Index(fields=["lease_until"], condition=Q(status="running"), name="step_running_lease_idx"),
            # runs.reconciler: waiting steps whose timer or timeout is due.
            models.Index(fields=["wake_at"], condition=Q(status="waiting", wake_at__isnull=False),
                         name="step_waiting_wake_idx"),
            # runs.engine.workers: task steps parked until a live worker has their handler.
            models.Index(fields=["run"], condition=Q(status="waiting", type="task"), name="step_task_waiting_idx"),
            # joins and cascades: a fan-out parent's children; a map's open items by status,
            # the next pending ones in item order.
            models.Index(fields=["parent", "status", "item_index"], condition=Q(parent__isnull=False),
                         name="step_parent_idx"),
            # runs.engine.flow: the steps of a concurrency key (holders counted, queued admitted).
            models.Index(fields=["concurrency_key", "status"], condition=~Q(concurrency_key=""),
                         name="step_concurrency_idx"),
        ]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in STEP_TERMINAL
