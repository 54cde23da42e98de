"""The ``approval`` step type: ask a person, park the run, and hold nothing meanwhile."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from runs.engine import rows
from runs.models import RunEvent, record
from steps import clock, types
from steps.templating import TemplateProblem, render_value

from .models import Approval, ApprovalStatus, OnTimeout
from .signals import approval_requested

if TYPE_CHECKING:
    from runs.definitions import StepSpec
    from runs.models import Run
    from steps.models import StepExecution


def _names(value: Any, field: str, spec: StepSpec) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"approval {spec.name!r}: approvers.{field} must be a list of names, got {value!r}")
    return list(value)


def timeout_output(approval: Approval, approved: bool) -> dict[str, Any]:
    return {
        "approved": approved, "decided_by": None, "decided_at": timezone.now().isoformat(), "timed_out": True,
        "comment": f"no decision before {approval.expires_at.isoformat() if approval.expires_at else 'expiry'}; "
                   f"on_timeout: {approval.on_timeout}",
        "content": approval.content,
    }


class ApprovalType(types.StepType):
    name = "approval"

    def _request(self, run: Run, step: StepExecution, spec: StepSpec, context: dict[str, Any],
                 now: Any) -> Approval | types.Fail:
        """The approval row ``activate`` inserts (unsaved), or the step's failure."""
        raw = spec.raw
        content = render_value(raw.get("content"), context)
        instructions = render_value(raw.get("instructions", ""), context)
        approvers = render_value(raw.get("approvers") or {}, context)
        try:
            groups = _names(approvers.get("groups"), "groups", spec)
            users = _names(approvers.get("users"), "users", spec)
        except ValueError as exc:
            return types.Fail({"type": "template_error", "message": str(exc)})
        webhook = render_value(raw.get("webhook") or "", context) or settings.STEVORA.get("APPROVAL_WEBHOOK_URL", "")
        expires_at = now + timedelta(seconds=float(spec.timeout_seconds)) if spec.timeout_seconds else None
        return Approval(
            step=step, run=run, workspace_id=run.workspace_id, step_key=step.key, workflow_name=run.workflow_name,
            content=content, instructions=str(instructions or ""), allowed_groups=groups, allowed_users=users,
            allow_edit=bool(raw.get("allow_edit", False)), on_timeout=raw.get("on_timeout", OnTimeout.REJECT),
            webhook_url=str(webhook or ""), expires_at=expires_at,
        )

    @staticmethod
    def _requested(approval: Approval) -> RunEvent:
        expires_at = approval.expires_at
        return RunEvent(run_id=approval.run_id, kind="approval_requested", step_key=approval.step_key,
                        message=f"approval #{approval.pk} requested"
                                + (f"; expires {expires_at.isoformat()}" if expires_at else ""),
                        data={"approval_id": approval.pk, "groups": approval.allowed_groups,
                              "users": approval.allowed_users, "allow_edit": approval.allow_edit,
                              "expires_at": expires_at.isoformat() if expires_at else None})

    def activate(self, run: Run, step: StepExecution, spec: StepSpec, context: dict[str, Any]) -> types.Outcome:
        approval = self._request(run, step, spec, context, clock.now())
        if isinstance(approval, types.Fail):
            return approval
        approval.save(force_insert=True)
        self._requested(approval).save(force_insert=True)
        approval_id, url = approval.pk, approval.webhook_url
        transaction.on_commit(lambda: approval_requested.send(sender=Approval, approval_id=approval_id,
                                                              webhook_url=url))
        return types.Wait(wake_at=approval.expires_at, state={"approval_id": approval.pk})

    def activate_many(self, items: list[tuple[Run, StepExecution]], spec: StepSpec,
                      contexts: list[dict[str, Any]]) -> list[types.Outcome] | None:
        """A batch of runs parking on this approval: their requests and history rows in one
        INSERT each, the ``approval_requested`` signals after the commit. A template error
        in any item: None (the engine activates each, and that item fails alone)."""
        now = clock.now()
        approvals: list[Approval] = []
        for (run, step), context in zip(items, contexts, strict=True):
            try:
                approval = self._request(run, step, spec, context, now)
            except TemplateProblem:
                return None
            if isinstance(approval, types.Fail):
                return None
            approvals.append(approval)
        rows.insert(Approval, approvals)
        rows.insert(RunEvent, [self._requested(approval) for approval in approvals])
        sent = [(approval.pk, approval.webhook_url) for approval in approvals]

        def announce() -> None:
            for approval_id, url in sent:
                approval_requested.send(sender=Approval, approval_id=approval_id, webhook_url=url)

        transaction.on_commit(announce)
        return [types.Wait(wake_at=approval.expires_at, state={"approval_id": approval.pk}) for approval in approvals]

    def wake(self, run: Run, step: StepExecution, spec: StepSpec) -> types.Outcome:
        """Nobody decided before ``expires_at``: expire the request and apply ``on_timeout``."""
        approval = Approval.objects.filter(step_id=step.pk).order_by("-id").first()
        if approval is None:
            return types.Fail({"type": "approval_missing", "message": f"step {step.key} has no approval request"})
        now = clock.now()
        Approval.objects.filter(pk=approval.pk, status=ApprovalStatus.PENDING).update(
            status=ApprovalStatus.EXPIRED, decided_at=now, decided_by_name="timeout")
        record(run.pk, "approval_expired", step_key=step.key, actor="timeout",
               message=f"approval #{approval.pk} expired; on_timeout: {approval.on_timeout}",
               data={"approval_id": approval.pk, "on_timeout": approval.on_timeout})
        if approval.on_timeout == OnTimeout.FAIL:
            return types.Fail({"type": "approval_timeout",
                               "message": f"approval #{approval.pk} for step {step.key} was not decided in time "
                                          f"(expired {approval.expires_at.isoformat() if approval.expires_at else ''})",
                               "approval_id": approval.pk})
        return types.Complete(timeout_output(approval, approval.on_timeout == OnTimeout.APPROVE))

    def cancel(self, step: StepExecution) -> None:
        Approval.objects.filter(step_id=step.pk, status=ApprovalStatus.PENDING).update(
            status=ApprovalStatus.CANCELLED, decided_at=timezone.now())

    def reopen(self, step: StepExecution) -> None:
        """The run was retried and this cancelled step waits again: so does its request."""
        approval = Approval.objects.filter(step_id=step.pk).order_by("-id").first()
        if approval is None or approval.status != ApprovalStatus.CANCELLED:
            return
        Approval.objects.filter(pk=approval.pk, status=ApprovalStatus.CANCELLED).update(
            status=ApprovalStatus.PENDING, decided_at=None)
        record(step.run_id, "approval_reopened", step_key=step.key,
               message=f"approval #{approval.pk} is pending again (run retried)", data={"approval_id": approval.pk})


def register_approval_type() -> None:
    types.register(ApprovalType())
