"""The one door for decisions: ``decide``. The admin button, ``manage.py approve`` and
the API all call it and get the same checks.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.db.models import BooleanField, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from runs.engine import transitions as engine
from runs.models import record
from runs.services import resume_waiting_step
from steps import types as step_types
from steps.jsonvalues import json_problems, text_problem

from .models import Approval, ApprovalStatus

DECIDE_PERMISSION = "approvals.decide_approval"
MAX_COMMENT = 10_000


class DecisionError(ValueError):
    """A decision was refused (already decided, expired, bad input); the message says why."""


class ApprovalNotFound(DecisionError, LookupError):
    pass


@dataclass
class Decision:
    approval: Approval
    output: dict[str, Any]


# Approval kinds other apps add (an llm step's tool call): kind -> resume(approval, output, who)
# -> bool, called inside decide's transaction after the decision is written; False (the step is
# no longer waiting) rolls the decision back. Filled from AppConfig.ready(), so approvals never
# imports the apps above it.
Resumer = Callable[[Approval, dict[str, Any], str], bool]
_kinds: dict[str, Resumer] = {}


def register_kind(kind: str, resume: Resumer) -> None:
    _kinds[kind] = resume


def _resume(approval: Approval, output: dict[str, Any], who: str) -> bool:
    if approval.kind == "step":
        return resume_waiting_step(approval.step_id, step_types.Complete(output), actor=who,
                                   expected_type="approval")
    resume = _kinds.get(approval.kind)
    if resume is None:
        raise DecisionError(f"approval #{approval.pk}: nothing resumes approvals of kind {approval.kind!r}")
    return resume(approval, output, who)


def may_decide(user: Any, approval: Approval, group_names: set[str] | None = None) -> tuple[bool, str]:
    """Whether ``user`` may decide ``approval``, and if not, why (in words for a person).

    ``group_names`` (the user's groups) saves a query per approval when checking many.
    """
    if user is None or isinstance(user, AnonymousUser) or not user.is_authenticated or not user.is_active:
        return False, "you must be signed in as an active user to decide approvals"
    if not user.has_perm(DECIDE_PERMISSION):
        return False, f"{user.get_username()} lacks the permission 'Can decide approvals' ({DECIDE_PERMISSION})"
    if approval.is_restricted and not user.is_superuser:
        if user.get_username() in approval.allowed_users:
            return True, ""
        if approval.allowed_groups:
            if group_names is not None:
                if group_names & set(approval.allowed_groups):
                    return True, ""
            elif user.groups.filter(name__in=approval.allowed_groups).exists():
                return True, ""
        who = []
        if approval.allowed_groups:
            who.append("groups " + ", ".join(approval.allowed_groups))
        if approval.allowed_users:
            who.append("users " + ", ".join(approval.allowed_users))
        return False, (f"{user.get_username()} is not among the approvers of approval #{approval.pk} "
                       f"(only {' or '.join(who)})")
    return True, ""


def _refusal(approval: Approval) -> str:
    if approval.status in (ApprovalStatus.APPROVED, ApprovalStatus.REJECTED):
        when = approval.decided_at.isoformat() if approval.decided_at else "earlier"
        return (f"approval #{approval.pk} was already {approval.status} by "
                f"{approval.decided_by_name or 'someone'} at {when}; a decision cannot be changed")
    if approval.status == ApprovalStatus.EXPIRED:
        return (f"approval #{approval.pk} expired at "
                f"{approval.expires_at.isoformat() if approval.expires_at else 'its deadline'} "
                f"(on_timeout: {approval.on_timeout}); it can no longer be decided")
    if approval.status == ApprovalStatus.CANCELLED:
        return f"approval #{approval.pk} was cancelled with its run; it can no longer be decided"
    return f"approval #{approval.pk} is {approval.status}"


def _check_input(approval: Approval, comment: Any, content: Any) -> None:
    if not isinstance(comment, str):
        raise DecisionError("comment: must be a string")
    if len(comment) > MAX_COMMENT:
        raise DecisionError(f"comment: must be at most {MAX_COMMENT} characters")
    problem = text_problem(comment)
    if problem:
        raise DecisionError(f"comment: {problem}")
    if content is not None:
        if not approval.allow_edit:
            raise DecisionError(f"content: approval #{approval.pk} does not allow editing the content")
        hostile = json_problems(content, "content")  # the same rules as run input and event payloads
        if hostile:
            raise DecisionError(f"{hostile[0][0]}: {hostile[0][1]}")
        try:
            json.dumps(content)
        except (TypeError, ValueError):
            raise DecisionError("content: must be JSON-serialisable") from None


def get_approval(approval_id: Any) -> Approval:
    try:
        return Approval.objects.get(pk=int(approval_id))
    except (Approval.DoesNotExist, TypeError, ValueError):
        raise ApprovalNotFound(f"no approval with id {approval_id!r}") from None


def decide(approval_id: Any, *, user: Any, approve: bool, comment: str = "", content: Any = None,
           operator: str = "") -> Decision:
    """Approve or reject a pending approval and resume its run, in one transaction.

    ``user`` must hold ``approvals.decide_approval`` and, when the step names
    approvers, be one of the named users or in one of the named groups. A trusted
    operator at the shell may pass ``user=None`` with ``operator`` naming them.
    Raises ``PermissionDenied`` or ``DecisionError`` (nothing changes then).
    """
    if not isinstance(approve, bool):
        raise DecisionError("approve: must be true or false")
    approval = get_approval(approval_id)
    if user is None and not operator:
        raise PermissionDenied("a decision needs a user (or an operator name for shell decisions)")
    _check_input(approval, comment, content)
    if user is not None:
        allowed, why = may_decide(user, approval)
        if not allowed:
            raise PermissionDenied(why)
    who = user.get_username() if user is not None else operator
    with transaction.atomic():
        # The run lock first (the engine's lock order), then the guarded update.
        engine.lock_run(approval.run_id)
        now = timezone.now()
        if approval.expires_at is not None and approval.expires_at <= now:
            fresh = Approval.objects.get(pk=approval.pk)
            if fresh.status == ApprovalStatus.PENDING:
                raise DecisionError(f"approval #{approval.pk} expired at {approval.expires_at.isoformat()} "
                                    f"(on_timeout: {approval.on_timeout}); it can no longer be decided")
            raise DecisionError(_refusal(fresh))
        status = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
        edited = content is not None
        updated = Approval.objects.filter(pk=approval.pk, status=ApprovalStatus.PENDING).update(
            status=status, decided_by=user if isinstance(user, AbstractBaseUser) else None, decided_by_name=who,
            decided_at=now, comment=comment, edited_content=content if edited else None, content_edited=edited,
        )
        if updated != 1:
            raise DecisionError(_refusal(Approval.objects.get(pk=approval.pk)))
        output = {
            "approved": approve, "decided_by": who, "decided_at": now.isoformat(), "comment": comment,
            "content": content if edited else approval.content,
        }
        record(approval.run_id, f"approval_{status}", step_key=approval.step_key, actor=who,
               message=f"approval #{approval.pk} {status} by {who}" + (f": {comment}" if comment else ""),
               data={"approval_id": approval.pk, "approved": approve, "comment": comment, "edited": edited,
                     "decided_at": now.isoformat()})
        if not _resume(approval, output, who):
            # The step is no longer waiting (its run ended): roll the decision back.
            raise DecisionError(f"approval #{approval.pk}: its step is no longer waiting; nothing was decided")
        approval.refresh_from_db()
    return Decision(approval, output)


def _json_list_has_any(field: str, values: list[str]) -> Q:
    """``field`` (a JSON list of strings) holds one of ``values``, decided in SQL."""
    if not values:
        return Q(pk__in=[])
    if connection.vendor == "postgresql":
        return Q(**{f"{field}__has_any_keys": values})  # jsonb ?| : array elements count as keys
    # SQLite (and others with json_each): the JSONField ``contains`` lookup is PostgreSQL-only.
    marks = ", ".join(["%s"] * len(values))
    return Q(RawSQL(f"EXISTS (SELECT 1 FROM json_each({Approval._meta.db_table}.{field}) "
                    f"WHERE json_each.value IN ({marks}))", values, output_field=BooleanField()))


def decidable_by(user: Any) -> QuerySet[Approval]:
    """Pending approvals ``user`` may decide, oldest first: ``may_decide``'s rules as one query.

    Unrestricted approvals, approvals naming the user, or one of the user's groups;
    superusers decide every one; nobody without the decide permission decides any.
    """
    rows = Approval.objects.filter(status=ApprovalStatus.PENDING).order_by("requested_at", "id")
    if (user is None or isinstance(user, AnonymousUser) or not getattr(user, "is_authenticated", False)
            or not user.is_active or not user.has_perm(DECIDE_PERMISSION)):
        return rows.none()
    if user.is_superuser:
        return rows
    groups = sorted(user.groups.values_list("name", flat=True))
    unrestricted = Q(allowed_users=[], allowed_groups=[])
    return rows.filter(unrestricted | _json_list_has_any("allowed_users", [user.get_username()])
                       | _json_list_has_any("allowed_groups", groups))


def pending_for(user: Any) -> list[Approval]:
    """Pending approvals ``user`` may decide, oldest first."""
    return list(decidable_by(user))


def pending(queryset: QuerySet[Approval] | None = None) -> QuerySet[Approval]:
    return (queryset if queryset is not None else Approval.objects.all()).filter(status=ApprovalStatus.PENDING)


def resolve(approval_or_run_id: str) -> Approval:
    """``manage.py approve`` takes an approval id or a run id (with exactly one pending approval)."""
    value = approval_or_run_id.strip()
    if value.isdigit():
        return get_approval(value)
    try:
        run_id = uuid.UUID(value)
    except ValueError:
        raise ApprovalNotFound(f"{value!r} is neither an approval id (a number) nor a run id (a UUID)") from None
    rows = list(Approval.objects.filter(run_id=run_id, status=ApprovalStatus.PENDING).order_by("id"))
    if not rows:
        decided = Approval.objects.filter(run_id=run_id).order_by("-id").first()
        if decided is not None:
            raise DecisionError(f"run {run_id} has no pending approval; the latest, #{decided.pk}, is "
                                f"{decided.status}")
        raise ApprovalNotFound(f"run {run_id} has no approvals")
    if len(rows) > 1:
        listing = ", ".join(f"#{a.pk} ({a.step_key})" for a in rows)
        raise DecisionError(f"run {run_id} has {len(rows)} pending approvals: {listing}; pass the approval id")
    return rows[0]
