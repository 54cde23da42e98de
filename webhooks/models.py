"""Webhook subscriptions and the log of every delivery (the rows are the truth).

A delivery row is written before anything is sent; a Celery task sends it and
records the outcome; a periodic sweep (``webhooks.sweep``) sends what is due, so a
lost message or a crashed worker delays a notice but never loses it.
"""

from __future__ import annotations

import secrets
import uuid

from django.db import models
from django.db.models import Q


class EventType(models.TextChoices):
    RUN_COMPLETED = "run.completed"
    RUN_FAILED = "run.failed"
    RUN_WAITING = "run.waiting"
    APPROVAL_REQUESTED = "approval.requested"


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class WebhookSubscription(models.Model):
    workspace = models.ForeignKey("runs.Workspace", on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=2000)
    # Needed in the clear to sign each body (an HMAC key, like Stripe's endpoint secrets).
    secret = models.CharField(max_length=200, default=new_secret,
                              help_text="Receivers verify X-Stevora-Signature with this secret.")
    events = models.JSONField(default=list, help_text="Any of: " + ", ".join(EventType.values))
    description = models.CharField(max_length=200, blank=True, default="")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # webhooks.receivers: active subscriptions of a workspace.
            models.Index(fields=["workspace"], condition=Q(active=True), name="webhooksub_active_ws"),
        ]

    def __str__(self) -> str:
        return f"{self.url} ({', '.join(self.events)})"


class DeliveryStatus(models.TextChoices):
    """Delivery state machine::

        pending -> sending -> succeeded
                           -> pending      (failed attempt; next_attempt_at = now + backoff)
                           -> failed       (refused address, or the last attempt failed)
        sending -> sending                 (claimed again after the claim expired: the sender died)
    """

    PENDING = "pending"
    SENDING = "sending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class WebhookDelivery(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False,
                          help_text="Sent as X-Stevora-Delivery: receivers deduplicate on it.")
    workspace = models.ForeignKey("runs.Workspace", on_delete=models.CASCADE, related_name="webhook_deliveries")
    # Null for the approval notices sent to a step's own webhook or STEVORA_APPROVAL_WEBHOOK_URL.
    subscription = models.ForeignKey(WebhookSubscription, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="deliveries")
    url = models.CharField(max_length=2000)
    event = models.CharField(max_length=32, choices=EventType.choices)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=8)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    response_code = models.PositiveIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # The run history row (runs.RunEvent id) this notice announces: at most one delivery
    # per row and URL, whether the post-commit receiver or the notice sweep wrote it.
    source_event = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["source_event", "url"], condition=Q(source_event__isnull=False),
                                    name="whdelivery_once_per_event_and_url"),
        ]
        indexes = [
            # webhooks.delivery.sweep_due: pending deliveries whose attempt is due.
            models.Index(fields=["next_attempt_at"], condition=Q(status="pending"), name="whdelivery_due_idx"),
            # webhooks.delivery.sweep_due: claims whose sender died.
            models.Index(fields=["claimed_until"], condition=Q(status="sending"), name="whdelivery_claim_idx"),
            # webhooks.metrics: deliveries given up recently.
            models.Index(fields=["last_attempt_at"], condition=Q(status="failed"), name="whdelivery_failed_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.url} ({self.status})"


class NoticeCursor(models.Model):
    """How far the notice sweep has read the run history (``webhooks.notices``)."""

    name = models.CharField(max_length=32, primary_key=True)
    last_event_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} at history row {self.last_event_id}"
