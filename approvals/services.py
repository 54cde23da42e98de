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
from django.db import OperationalError, connection, transaction
from django.db.models import BooleanField, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from runs.engine import resuming
from runs.engine import transitions as engine
from runs.engine.effects import Effects
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


MAX_BULK = 10_000
BULK_CHUNK = 500


@dataclass
class ItemResult:
    """One id of a bulk decision: ``decided`` (with the new status) or ``refused`` (with why)."""

    id: Any
    outcome: str  # "decided" | "refused"
    status: str = ""
    reason: str = ""
    run_id: Any = None


def _bulk_ids(ids: Any) -> list[int]:
    if not isinstance(ids, (list, tuple)):
        raise DecisionError("ids: must be a list of approval ids")
    if len(ids) > MAX_BULK:
        raise DecisionError(f"ids: at most {MAX_BULK} ids per call (got {len(ids)})")
    out: list[int] = []
    for i, value in enumerate(ids):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
            raise DecisionError(f"ids[{i}]: must be a positive integer approval id")
        out.append(value)
    return out


def decide_many(ids: Any, *, user: Any, approve: bool, comment: str = "", operator: str = "",
                workspace: Any = None, chunk: int = BULK_CHUNK) -> list[ItemResult]:
    """Approve or reject many pending approvals: ``decide``'s checks and rows, set-based.

    Every id gets a result, in the order given: ``decided``, or ``refused`` with the
    reason ``decide`` would have raised (no permission, not an approver, already
    decided, expired, not found, its step no longer waiting). Refusals change nothing.
    The decided ones are written ``chunk`` at a time, each chunk one transaction: the
    runs locked in id order (the engine's lock), one guarded UPDATE of the approvals,
    the history rows in one INSERT, the waiting steps resumed set-based where the next
    step is a work step (``runs.engine.resuming``: one UPDATE of the steps, one INSERT
    of their successors, one UPDATE of the runs) and through ``resume_waiting_step``
    (the same engine call as a single decision) for every other shape, the doorbells
    and status signals published once after the commit. Edited content is per approval:
    use ``decide`` for that. With ``workspace`` (the API's), ids of other workspaces are
    refused as not found. Raises ``DecisionError`` for bad input (nothing decided)
    and ``PermissionDenied`` when there is neither a user nor an operator.
    """
    if not isinstance(approve, bool):
        raise DecisionError("approve: must be true or false")
    wanted = _bulk_ids(ids)
    if user is None and not operator:
        raise PermissionDenied("a decision needs a user (or an operator name for shell decisions)")
    if not isinstance(comment, str):
        raise DecisionError("comment: must be a string")
    if len(comment) > MAX_COMMENT:
        raise DecisionError(f"comment: must be at most {MAX_COMMENT} characters")
    problem = text_problem(comment)
    if problem:
        raise DecisionError(f"comment: {problem}")
    if not isinstance(chunk, int) or chunk < 1:
        raise DecisionError("chunk: must be a positive integer")
    groups: set[str] | None = None
    if user is not None and getattr(user, "is_authenticated", False):
        groups = set(user.groups.values_list("name", flat=True))
    who = user.get_username() if user is not None else operator
    results: dict[int, ItemResult] = {}
    order = list(dict.fromkeys(wanted))  # a repeated id is decided once
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        rows = Approval.objects.filter(pk__in=part)
        if workspace is not None:
            rows = rows.filter(workspace=workspace)
        found = {a.pk: a for a in rows}
        ready: list[Approval] = []
        for pk in part:
            approval = found.get(pk)
            if approval is None:
                results[pk] = ItemResult(pk, "refused", reason=f"no approval with id {pk!r}")
                continue
            if user is not None:
                allowed, why = may_decide(user, approval, groups)
                if not allowed:
                    results[pk] = ItemResult(pk, "refused", reason=why, run_id=approval.run_id)
                    continue
            ready.append(approval)
        if ready:
            for attempt in (1, 2, 3):
                try:
                    results.update(_decide_chunk(ready, user=user, who=who, approve=approve, comment=comment))
                    break
                except OperationalError:
                    # A deadlock with a worker locking a parent and its child run the other way
                    # round: the chunk rolled back whole; take it again.
                    if attempt == 3:
                        raise
    return [results[pk] for pk in wanted]


def _decide_chunk(approvals: list[Approval], *, user: Any, who: str, approve: bool,
                  comment: str) -> dict[int, ItemResult]:
    out: dict[int, ItemResult] = {}
    status = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
    with transaction.atomic():
        # The engine's lock order: every run first (in id order, so two bulk calls never
        # deadlock), then the guarded updates.
        runs = resuming.lock_runs({a.run_id for a in approvals})
        now = timezone.now()
        fresh = {a.pk: a for a in Approval.objects.filter(pk__in=[a.pk for a in approvals])}
        waiting = resuming.waiting_steps(runs, [a.step_id for a in approvals], expected_type="approval")
        go: list[Approval] = []
        for approval in approvals:
            row = fresh[approval.pk]
            if row.status != ApprovalStatus.PENDING:
                out[row.pk] = ItemResult(row.pk, "refused", reason=_refusal(row), run_id=row.run_id)
            elif row.kind != "step":
                out[row.pk] = ItemResult(row.pk, "refused", run_id=row.run_id, reason=(
                    f"approval #{row.pk} is a {row.kind} decision (an llm step's tool call): decide it on its "
                    f"own; bulk decisions take approval steps only"))
            elif row.expires_at is not None and row.expires_at <= now:
                out[row.pk] = ItemResult(row.pk, "refused", run_id=row.run_id, reason=(
                    f"approval #{row.pk} expired at {row.expires_at.isoformat()} "
                    f"(on_timeout: {row.on_timeout}); it can no longer be decided"))
            elif row.step_id not in waiting:
                out[row.pk] = ItemResult(row.pk, "refused", run_id=row.run_id, reason=(
                    f"approval #{row.pk}: its step is no longer waiting; nothing was decided"))
            else:
                go.append(row)
        if not go:
            return out
        updated = Approval.objects.filter(pk__in=[a.pk for a in go], status=ApprovalStatus.PENDING).update(
            status=status, decided_by=user if isinstance(user, AbstractBaseUser) else None, decided_by_name=who,
            decided_at=now, comment=comment, edited_content=None, content_edited=False,
        )
        if updated != len(go):  # cannot happen under the run locks; never write half a chunk
            raise DecisionError("approvals changed while being decided; nothing in this chunk was decided")
        fx = Effects()
        together: list[tuple[resuming.Waiting, dict[str, Any]]] = []
        one_by_one: list[tuple[Approval, dict[str, Any]]] = []
        for approval in go:
            output = {"approved": approve, "decided_by": who, "decided_at": now.isoformat(), "comment": comment,
                      "content": approval.content}
            fx.event(approval.run_id, f"approval_{status}", approval.step_key, actor=who,
                     message=f"approval #{approval.pk} {status} by {who}" + (f": {comment}" if comment else ""),
                     data={"approval_id": approval.pk, "approved": approve, "comment": comment, "edited": False,
                           "decided_at": now.isoformat()})
            found = waiting[approval.step_id]
            if found.target is not None:
                together.append((found, output))
            else:
                one_by_one.append((approval, output))
            out[approval.pk] = ItemResult(approval.pk, "decided", status=status, run_id=approval.run_id)
        # The common shape (the next step is a work step) in a few statements for all; the
        # others through the same call as a single decision.
        resuming.complete_many(together, fx, actor=who)
        for approval, output in one_by_one:
            if not resume_waiting_step(approval.step_id, step_types.Complete(output), actor=who,
                                       expected_type="approval", fx=fx):
                raise DecisionError(f"approval #{approval.pk}: its step is no longer waiting; nothing in this "
                                    f"chunk was decided")
        fx.flush()
    return out


def pending_ids(*, workflow: str | None = None, workspace: Any = None, limit: int = MAX_BULK) -> list[int]:
    """Ids of pending approvals (of one workflow, one workspace), oldest first: a bulk
    decision's filter. Whether the caller may decide each is ``decide_many``'s business."""
    rows = pending()
    if workspace is not None:
        rows = rows.filter(workspace=workspace)
    if workflow is not None:
        rows = rows.filter(workflow_name=workflow)
    return list(rows.order_by("requested_at", "id").values_list("pk", flat=True)[:limit])


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


def rows_after(rows: QuerySet[Approval], approval_id: int) -> QuerySet[Approval]:
    """Keyset paging over ``(requested_at, id)``: the rows after approval ``approval_id``."""
    anchor = Approval.objects.filter(pk=approval_id).values_list("requested_at", flat=True).first()
    if anchor is None:
        raise ApprovalNotFound(f"no approval with id {approval_id!r}")
    return rows.filter(Q(requested_at__gt=anchor) | Q(requested_at=anchor, id__gt=approval_id))


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
