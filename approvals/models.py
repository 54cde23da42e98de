"""Approval requests and their decisions.

One row per visit of an ``approval`` step. The step parks as ``waiting`` (holding no
worker) and the row says what a person must review, who may decide and until when.
Decisions go through ``approvals.services.decide`` only.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q


class ApprovalStatus(models.TextChoices):
    """Approval state machine::

        pending -> approved | rejected     (a decision: approvals.services.decide)
        pending -> expired                 (nobody decided before expires_at; on_timeout applies)
        pending -> cancelled               (the run was cancelled or failed while waiting)

    Every move is a guarded UPDATE ``WHERE status = 'pending'``: two racing
    decisions give exactly one.
    """

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


APPROVAL_TERMINAL = (ApprovalStatus.APPROVED, ApprovalStatus.REJECTED, ApprovalStatus.EXPIRED,
                     ApprovalStatus.CANCELLED)


class OnTimeout(models.TextChoices):
    REJECT = "reject"
    APPROVE = "approve"
    FAIL = "fail"


class Approval(models.Model):
    step = models.ForeignKey("steps.StepExecution", on_delete=models.CASCADE, related_name="approvals")
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="approvals")
    workspace = models.ForeignKey("runs.Workspace", on_delete=models.PROTECT, related_name="approvals")
    # Denormalised for the inbox (no join to Run and Workflow on every row).
    step_key = models.CharField(max_length=255)
    # What the decision resumes: "step" (an approval step), or a kind another app registered
    # with approvals.services.register_kind (an llm step's tool call waiting for a decision).
    kind = models.CharField(max_length=32, default="step")
    workflow_name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING)
    content = models.JSONField(null=True, blank=True, help_text="What the person reviews (rendered template).")
    instructions = models.TextField(blank=True, default="")
    # Names, not foreign keys: a definition may name a group before it exists.
    allowed_groups = models.JSONField(default=list, blank=True)
    allowed_users = models.JSONField(default=list, blank=True)
    allow_edit = models.BooleanField(default=False)
    on_timeout = models.CharField(max_length=16, choices=OnTimeout.choices, default=OnTimeout.REJECT)
    webhook_url = models.CharField(max_length=2000, blank=True, default="")
    requested_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="approval_decisions")
    # Who decided, as text: survives the user's deletion and names CLI operators.
    decided_by_name = models.CharField(max_length=150, blank=True, default="")
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True, default="")
    edited_content = models.JSONField(null=True, blank=True)
    content_edited = models.BooleanField(default=False)

    class Meta:
        permissions = [("decide_approval", "Can decide approvals")]
        ordering = ["requested_at", "id"]
        constraints = [
            # One open request per step visit (a loop's second visit is another step row). Only
            # pending ones: a step that is retried after its approval expired asks again.
            models.UniqueConstraint(fields=["step"], condition=Q(status="pending"),
                                    name="approval_one_pending_per_step"),
        ]
        indexes = [
            # The inbox and pending_approvals: pending requests, oldest first.
            models.Index(fields=["requested_at"], condition=Q(status="pending"), name="approval_pending_idx"),
            # approve RUN_ID: a run's approvals.
            models.Index(fields=["run", "status"], name="approval_run_status"),
        ]

    def __str__(self) -> str:
        return f"approval #{self.pk} {self.workflow_name}/{self.step_key} ({self.status})"

    @property
    def is_restricted(self) -> bool:
        return bool(self.allowed_groups or self.allowed_users)

    @property
    def final_content(self) -> Any:
        return self.edited_content if self.content_edited else self.content


__all__ = ["APPROVAL_TERMINAL", "Approval", "ApprovalStatus", "OnTimeout"]
