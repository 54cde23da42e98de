"""External events, the steps waiting for them, and which event completed which wait."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class Event(models.Model):
    """An event from the outside world (``send_event``, the API).

    Kept until ``expires_at`` so that a wait that starts later (within its
    ``lookback_seconds``) still finds it.
    """

    workspace = models.ForeignKey("runs.Workspace", on_delete=models.PROTECT, related_name="events")
    name = models.CharField(max_length=200)
    key = models.CharField(max_length=255, blank=True, default="")
    payload = models.JSONField(default=dict, blank=True)
    # The sender's id for deduplication: the same id twice is the same event.
    event_id = models.CharField(max_length=255, null=True, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "event_id"], condition=Q(event_id__isnull=False),
                                    name="event_unique_id_per_workspace"),
        ]
        indexes = [
            # events.step_type (lookback at activation): recent events by name and key.
            models.Index(fields=["workspace", "name", "key", "received_at"], name="event_name_key_received"),
        ]

    def __str__(self) -> str:
        return f"{self.name}[{self.key}] #{self.pk}"

    def as_output(self) -> dict[str, object]:
        return {
            "id": self.pk, "name": self.name, "key": self.key, "payload": self.payload, "event_id": self.event_id,
            "received_at": self.received_at.isoformat() if self.received_at else None, "timed_out": False,
        }


class EventWait(models.Model):
    """A step waiting for an event: the index ``deliver_event`` looks up (name + key).

    Created when an ``external_event`` step parks, deleted when it completes, times
    out or is cancelled. ``key`` null means any key (the step has only ``match``).
    """

    step = models.OneToOneField("steps.StepExecution", on_delete=models.CASCADE, related_name="event_wait")
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="event_waits")
    workspace = models.ForeignKey("runs.Workspace", on_delete=models.CASCADE, related_name="event_waits")
    name = models.CharField(max_length=200)
    key = models.CharField(max_length=255, null=True, blank=True)
    match = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            # events.services.deliver_event: waits for this event name and key.
            models.Index(fields=["workspace", "name", "key"], name="eventwait_name_key"),
        ]

    def __str__(self) -> str:
        return f"wait {self.name}[{self.key or '*'}] step {self.step_id}"


class EventMatch(models.Model):
    """Event X completed step Y (recorded with the event, before the step is resumed)."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="matches")
    step = models.ForeignKey("steps.StepExecution", on_delete=models.CASCADE, related_name="event_matches")
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="event_matches")
    step_name = models.CharField(max_length=200)
    matched_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # An event completes a given step at most once, and a step takes one event.
            models.UniqueConstraint(fields=["step"], name="eventmatch_one_per_step"),
        ]
        indexes = [
            # events.step_type: a loop's later visit does not reuse an event an earlier visit consumed.
            models.Index(fields=["run", "step_name"], name="eventmatch_run_step"),
        ]

    def __str__(self) -> str:
        return f"event {self.event_id} -> step {self.step_id}"


class EventTrigger(models.Model):
    """``triggers[trigger_index]: {event: NAME}`` of a workflow's latest version: a delivered
    event of this name (and key, and ``if``) starts a run of ``workflow_name``.

    Kept in sync when a version is stored (``events.triggers.sync_event_triggers``).
    ``key`` null: any key. ``input`` null: the run's input is the event's payload.
    """

    workspace = models.ForeignKey("runs.Workspace", on_delete=models.CASCADE, related_name="event_triggers")
    workflow = models.ForeignKey("runs.Workflow", on_delete=models.CASCADE, related_name="event_triggers",
                                 help_text="The version that declares this trigger.")
    workflow_name = models.CharField(max_length=200)
    trigger_index = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    key = models.CharField(max_length=255, null=True, blank=True)
    condition = models.TextField(blank=True, default="", help_text="The trigger's if: expression over `event`.")
    input = models.JSONField(null=True, blank=True)
    # Flow control (events.flow): {period_seconds, key?, timeout_seconds?} / {limit, period_seconds, key?}.
    debounce = models.JSONField(null=True, blank=True)
    rate_limit = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["workflow_name", "trigger_index"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "workflow_name", "trigger_index"],
                                    name="eventtrigger_one_per_trigger"),
        ]
        indexes = [
            # events.triggers.start_triggered_runs: the triggers of this event name.
            models.Index(fields=["workspace", "name"], name="eventtrigger_name"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_name} on {self.name}[{self.key or '*'}]"


class TriggerOutcome(models.TextChoices):
    """What a trigger did with one event::

        started                  (a run was started for it)
        debounced -> started     (it was the last of its burst: the sweep started the run)
        debounced                (a later event of the burst took its place)
        skipped                  (the trigger's rate_limit was reached; ``reason`` says so)
    """

    STARTED = "started"
    DEBOUNCED = "debounced"
    SKIPPED = "skipped"


class EventTriggering(models.Model):
    """What each trigger did with an event: the record of a debounce or a rate limit, on the event."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="triggerings")
    workspace = models.ForeignKey("runs.Workspace", on_delete=models.CASCADE, related_name="+")
    workflow_name = models.CharField(max_length=200)
    trigger_index = models.PositiveIntegerField()
    flow_key = models.CharField(max_length=500, blank=True, default="",
                                help_text="the rendered debounce / rate_limit key")
    outcome = models.CharField(max_length=16, choices=TriggerOutcome.choices)
    reason = models.TextField(blank=True, default="")
    run_id = models.CharField(max_length=64, blank=True, default="")
    at = models.DateTimeField(help_text="database clock")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["event", "workflow_name", "trigger_index"],
                                    name="eventtriggering_once_per_trigger"),
        ]
        indexes = [
            # events.flow.rate_limited: the runs a trigger started for a key inside its period.
            models.Index(fields=["workspace", "workflow_name", "trigger_index", "flow_key", "outcome", "at"],
                         name="eventtriggering_rate"),
        ]

    def __str__(self) -> str:
        return f"event {self.event_id}: {self.workflow_name} triggers[{self.trigger_index}] {self.outcome}"


class PendingDebounce(models.Model):
    """A burst of events being debounced: one row per trigger and key, pushed back by each new
    event (in the transaction that stores it) and started by the sweep once ``fire_at`` passed."""

    workspace = models.ForeignKey("runs.Workspace", on_delete=models.CASCADE, related_name="+")
    workflow_name = models.CharField(max_length=200)
    trigger_index = models.PositiveIntegerField()
    flow_key = models.CharField(max_length=500, blank=True, default="")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="+", help_text="the burst's last event")
    events = models.PositiveIntegerField(default=1, help_text="events in the burst so far")
    first_at = models.DateTimeField()
    fire_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "workflow_name", "trigger_index", "flow_key"],
                                    name="pendingdebounce_one_per_key"),
        ]
        indexes = [
            # events.flow.fire_due_debounces: the bursts whose quiet period is over.
            models.Index(fields=["fire_at"], name="pendingdebounce_fire_at"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_name} triggers[{self.trigger_index}] [{self.flow_key}] at {self.fire_at}"
