"""Schedules (the ``cron``/``every_seconds`` triggers of the latest workflow versions) and
the ticks they fired."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class ScheduleKind(models.TextChoices):
    CRON = "cron"
    EVERY = "every"


class CatchUp(models.TextChoices):
    """What a sweep does with ticks that fell while no beat ran (``schedules.ticks.plan``)."""

    SKIP = "skip"
    ONE = "one"
    ALL = "all"


class Schedule(models.Model):
    """One schedule trigger of a workflow: ``triggers[trigger_index]`` of its latest version.

    Kept in sync when a version is stored (``services.sync_schedules``): a trigger whose
    timing is unchanged keeps its ``next_fire_at`` and its paused state; a trigger that is
    gone is deleted. ``next_fire_at`` is the first tick not fired yet; a sweep that fires
    moves it on with a guarded UPDATE, so two beats never fire one tick twice.

    Active ⇄ paused (``paused``): a paused schedule fires nothing; resuming starts again
    at the first tick after now (no burst for the ticks that fell while paused).
    """

    workspace = models.ForeignKey("runs.Workspace", on_delete=models.CASCADE, related_name="schedules")
    workflow = models.ForeignKey("runs.Workflow", on_delete=models.CASCADE, related_name="schedules",
                                 help_text="The version that declares this trigger.")
    workflow_name = models.CharField(max_length=200)
    trigger_index = models.PositiveIntegerField(help_text="Its position in the definition's triggers: list.")
    kind = models.CharField(max_length=8, choices=ScheduleKind.choices)
    cron = models.CharField(max_length=200, blank=True, default="")
    timezone = models.CharField(max_length=64, default="UTC")
    every_seconds = models.PositiveIntegerField(null=True, blank=True)
    catch_up = models.CharField(max_length=8, choices=CatchUp.choices, default=CatchUp.ONE)
    input = models.JSONField(default=dict, blank=True)
    paused = models.BooleanField(default=False)
    next_fire_at = models.DateTimeField()
    last_tick_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["workflow_name", "trigger_index"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "workflow_name", "trigger_index"],
                                    name="schedule_one_per_trigger"),
        ]
        indexes = [
            # schedules.services.fire_due_schedules: the active schedules that are due.
            models.Index(fields=["next_fire_at"], condition=Q(paused=False), name="schedule_due"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_name} trigger {self.trigger_index} ({self.describe()})"

    def describe(self) -> str:
        if self.kind == ScheduleKind.EVERY:
            return f"every {self.every_seconds}s"
        return f"cron {self.cron!r} {self.timezone}"

    def timing(self) -> tuple[str, str, str, int | None]:
        return (self.kind, self.cron, self.timezone, self.every_seconds)


class ScheduleTick(models.Model):
    """Schedule S fired tick T: at most one row, and so at most one run, per (S, T)."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="ticks")
    tick = models.DateTimeField()
    run = models.ForeignKey("runs.Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    error = models.TextField(blank=True, default="", help_text="Why no run started (e.g. its input was refused).")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-tick"]
        constraints = [
            models.UniqueConstraint(fields=["schedule", "tick"], name="scheduletick_once_per_tick"),
        ]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.tick.isoformat()}"
