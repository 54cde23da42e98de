"""Workspaces, immutable workflow versions, runs and their append-only history."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q


class IllegalTransition(Exception):
    """A state change that the state machine does not allow, or that lost a race."""


DEFAULT_WORKSPACE_SLUG = "default"


class Workspace(models.Model):
    """A tenant. Every definition and run belongs to one; ``default`` exists after migrate."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    # runs.services.retention: finished runs older than this many days are purged. Empty:
    # the global STEVORA_RETENTION_DAYS applies (unset there too: kept forever).
    retention_days = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Purge finished runs (with their steps, history, LLM and tool calls) this many days after "
                  "they finished. Empty: the global STEVORA_RETENTION_DAYS (unset: keep forever).")

    def __str__(self) -> str:
        return self.slug

    @classmethod
    def default(cls) -> Workspace:
        workspace, _ = cls.objects.get_or_create(slug=DEFAULT_WORKSPACE_SLUG, defaults={"name": "Default"})
        return workspace


class Workflow(models.Model):
    """One immutable version of a workflow definition.

    Loading the same document twice finds the same row (by content hash); a changed
    document under the same name becomes version N+1. Runs point at the version they
    started on and keep it.
    """

    workspace = models.ForeignKey(Workspace, on_delete=models.PROTECT, related_name="workflows")
    name = models.CharField(max_length=200)
    version = models.PositiveIntegerField()
    description = models.TextField(blank=True, default="")
    definition = models.JSONField()
    content_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "name", "version"], name="workflow_unique_version"),
            models.UniqueConstraint(fields=["workspace", "name", "content_hash"], name="workflow_unique_content"),
        ]
        ordering = ["name", "-version"]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class RunStatus(models.TextChoices):
    """Run state machine (DESIGN §3)::

        queued -> running          (admitted: a concurrency slot of its key is free)
        queued -> cancelled
        pending -> running <-> waiting
        running -> paused -> running
        running|waiting|paused -> completed | failed | cancelled
        failed -> running          (retry from the failed step)
        failed -> queued           (retry while its concurrency key is full)

    ``queued`` is a run of a workflow with ``concurrency`` whose key had no free slot when
    it started (no step exists yet), was retried (its failed step is reopened when it is
    admitted) or forked (only its kept steps exist): nothing holds a worker (runs.engine.flow).
    """

    QUEUED = "queued"
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


RUN_TERMINAL = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
RUN_ACTIVE = (RunStatus.QUEUED, RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING)
# Runs that hold a slot of their workflow's concurrency key (started and not yet ended).
RUN_HOLDING = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED)


class Run(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.PROTECT, related_name="runs")
    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="runs")
    # Denormalised so the idempotency constraint can name it.
    workflow_name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.PENDING)
    input = models.JSONField(default=dict)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    parent_run = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="child_runs"
    )
    parent_step = models.ForeignKey(
        "steps.StepExecution", null=True, blank=True, on_delete=models.SET_NULL, related_name="child_runs"
    )
    # A fork (services.fork_run) names its source and the step it ran from; the source
    # finds its forks through ``forks``.
    forked_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="forks"
    )
    forked_from_step = models.CharField(max_length=200, blank=True, default="")
    # A fork's "replay: recorded": model turns and tool calls whose request matches the source
    # run's record are answered from it (providers.replay); "" runs everything live.
    replay = models.CharField(max_length=16, blank=True, default="")
    created_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Roll-ups of LLM usage (filled by the providers app).
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    max_cost_usd = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    max_tokens = models.BigIntegerField(null=True, blank=True)
    # Flow control (runs.engine.flow): higher first wherever work waits; the rendered
    # concurrency key of its workflow ("" when the workflow declares none).
    priority = models.SmallIntegerField(default=0)
    concurrency_key = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "workflow_name", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="run_unique_idempotency_key",
            ),
        ]
        indexes = [
            # Admin and API run lists: newest first, filtered by status.
            models.Index(fields=["workspace", "-created_at"], name="run_ws_created"),
            models.Index(fields=["status", "-created_at"], name="run_status_created"),
            # runs.services.retention: finished runs, oldest first (the purge's keyset walk).
            models.Index(fields=["workspace", "finished_at", "id"],
                         condition=Q(status__in=["completed", "failed", "cancelled"]), name="run_finished_idx"),
            # runs.engine.flow: the runs of a concurrency key (holders counted, queued admitted).
            models.Index(fields=["concurrency_key", "status"], condition=~Q(concurrency_key=""),
                         name="run_concurrency_idx"),
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.workflow_name} {self.id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in RUN_TERMINAL


class RunEvent(models.Model):
    """Append-only history of a run: every transition, retry, recovery and control action."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="history",
                            db_index=False)  # runevent_run_id (run, id) serves every lookup
    kind = models.CharField(max_length=64)
    step_key = models.CharField(max_length=255, blank=True, default="")
    actor = models.CharField(max_length=150, blank=True, default="")
    message = models.TextField(blank=True, default="")
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["run", "id"], name="runevent_run_id")]

    def __str__(self) -> str:
        return f"{self.kind} {self.step_key}".strip()


class Worker(models.Model):
    """An engine process that runs steps (a Celery pool process, or ``runengine``).

    It is alive while it holds its liveness lock — a session-level advisory lock on a
    connection of its own on PostgreSQL, a ``flock`` on a file under ``STEVORA_VAR_DIR``
    on SQLite — which the operating system and the database drop the moment the process
    dies (``runs.engine.workers``). ``name`` (host:pid) prefixes the ``lease_owner`` of the
    steps it runs; ``handlers`` is what it can run.
    """

    name = models.CharField(max_length=200, db_index=True)
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    kind = models.CharField(max_length=32)  # celery | embedded
    queue = models.CharField(max_length=200, blank=True, default="")
    handlers = models.JSONField(default=list, blank=True)
    lock_key = models.PositiveIntegerField(default=0)
    # PostgreSQL's start time when the lock was taken: a server restart drops every lock, and
    # a lock lost that way is not a death (the worker takes it again).
    lock_epoch = models.CharField(max_length=64, blank=True, default="")
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)
    stop_reason = models.CharField(max_length=32, blank=True, default="")  # shutdown | died

    class Meta:
        indexes = [models.Index(fields=["stopped_at"], name="worker_stopped_at")]

    def __str__(self) -> str:
        return self.name


def record(run_id: Any, kind: str, *, step_key: str = "", actor: str = "", message: str = "",
           data: dict[str, Any] | None = None) -> RunEvent:
    """Append one history row (call inside the transaction that made the change)."""
    return RunEvent.objects.create(
        run_id=run_id, kind=kind, step_key=step_key, actor=actor or "", message=message, data=data or {}
    )


__all__ = [
    "IllegalTransition", "Run", "RunEvent", "RunStatus", "RUN_ACTIVE", "RUN_HOLDING", "RUN_TERMINAL",
    "Worker", "Workflow", "Workspace", "record",
]
