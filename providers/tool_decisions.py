"""Tool calls a person decides: ``requires_approval`` tools, and irreversible calls cut off by a crash.

Both park the ``llm`` step (``steps.types.Park``: the step is ``waiting``, no worker is
held) with an approval in the approval inbox (``approvals.Approval``, kind ``tool_call`` or
``tool_crash``), decided through the inbox's one door, ``approvals.services.decide`` — the
admin page, ``manage.py approve`` and the API. The decision is written on the ``ToolCall``
row (its status and ``decisions``) in decide's transaction; then the step goes back to
``ready`` and its agent loop, replaying its recorded rounds, reads the row:

* ``tool_call`` (before the call runs): approve → it runs; approve with edited
  ``arguments`` → it runs with those; reject → it does not run, and the model gets
  ``error: rejected by <who>: <comment>`` as the tool's result.
* ``tool_crash`` (the worker died inside an ``irreversible`` tool, so whether it took
  effect is unknown): approve → run it once more; approve with ``result`` filled in →
  that JSON is recorded as the tool's result, the tool is not run; reject → the step fails.

Imports point one way: providers imports approvals; approvals knows these kinds only
through ``approvals.services.register_kind``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals.models import Approval, ApprovalStatus
from approvals.services import DecisionError, register_kind
from approvals.signals import approval_requested
from runs.models import record
from runs.services import requeue_waiting_step, resume_waiting_step
from steps import types

from .guardrails import schema_problems
from .models import ToolCall, ToolCallStatus

TOOL_CALL = "tool_call"
TOOL_CRASH = "tool_crash"

APPROVAL_INSTRUCTIONS = (
    "The model asks to call the tool {tool!r}. Approve to run it as asked; edit \"arguments\" and approve "
    "to run it with your arguments; reject (say why in the comment) to refuse — the model reads your "
    "comment as the tool's result.")
CRASH_INSTRUCTIONS = (
    "The worker died while the irreversible tool {tool!r} was running (ran {executions}x), so whether it "
    "took effect is unknown. Approve to run it again (idempotency key {key}); fill in \"result\" and approve "
    "to record that JSON as its result without running it; reject to fail the step.")


def park(invocation: types.Invocation, row: ToolCall, kind: str) -> types.Park:
    """The ``Park`` that waits for a person's decision about ``row`` (raise it)."""
    run, step = invocation.run, invocation.step
    content: dict[str, Any] = {"tool": row.tool, "arguments": row.arguments, "round": row.round,
                               "call_id": row.call_id}
    if kind == TOOL_CRASH:
        content.update(idempotency_key=row.idempotency_key, executions=row.executions, result=None)
        instructions = CRASH_INSTRUCTIONS.format(tool=row.tool, executions=row.executions, key=row.idempotency_key)
        reason = f"tool {row.tool} (irreversible) was cut off by a crash: it needs a decision"
    else:
        instructions = APPROVAL_INSTRUCTIONS.format(tool=row.tool)
        reason = f"tool {row.tool} requires approval of its arguments"

    def request() -> None:
        # In the engine's transaction that parks the step. A pending request for this step may
        # exist already (the step was re-executed before anyone decided): that one stands.
        if Approval.objects.filter(step_id=step.pk, status=ApprovalStatus.PENDING).exists():
            return
        approval = Approval.objects.create(
            step_id=step.pk, run_id=run.pk, workspace_id=run.workspace_id, step_key=step.key,
            workflow_name=run.workflow_name, kind=kind, content=content, instructions=instructions,
            allow_edit=True)
        record(run.pk, "approval_requested", step_key=step.key, message=f"approval #{approval.pk} requested: {reason}",
               data={"approval_id": approval.pk, "kind": kind, "tool": row.tool, "call_id": row.call_id})
        approval_id, url = approval.pk, settings.STEVORA.get("APPROVAL_WEBHOOK_URL", "")
        transaction.on_commit(lambda: approval_requested.send(sender=Approval, approval_id=approval_id,
                                                              webhook_url=url))

    return types.Park(reason, state={"tool_call": row.pk, "decision": kind},
                      data={"kind": kind, "tool": row.tool, "call_id": row.call_id}, before_commit=request)


def _row(approval: Approval, status: str) -> ToolCall:
    content = approval.content if isinstance(approval.content, dict) else {}
    row = (ToolCall.objects.select_for_update()
           .filter(step_id=approval.step_id, status=status, call_id=str(content.get("call_id")),
                   round=int(content.get("round") or 0))
           .first())
    if row is None:
        raise DecisionError(f"approval #{approval.pk}: its tool call is no longer {status}; nothing was decided")
    return row


def _tool_schema(row: ToolCall) -> dict[str, Any] | None:
    config = row.step.input if isinstance(row.step.input, dict) else {}
    for tool in config.get("tools") or []:
        if isinstance(tool, dict) and (tool.get("name") or tool.get("handler")) in (row.tool, row.handler):
            parameters = tool.get("parameters")
            return parameters if isinstance(parameters, dict) else None
    return None


def _note(approval: Approval, kind: str, action: str, who: str, comment: str, **more: Any) -> dict[str, Any]:
    return {"kind": kind, "action": action, "by": who, "at": timezone.now().isoformat(), "approval": approval.pk,
            **({"comment": comment} if comment else {}), **more}


def _edited(approval: Approval, output: dict[str, Any]) -> dict[str, Any] | None:
    content = output.get("content")
    if content == approval.content:
        return None
    if not isinstance(content, dict):
        raise DecisionError("content: must be a JSON object (edit its fields, keep its shape)")
    return content


def resume_tool_call(approval: Approval, output: dict[str, Any], who: str) -> bool:
    row = _row(approval, ToolCallStatus.AWAITING_APPROVAL)
    comment = str(output.get("comment") or "")
    if not output["approved"]:
        message = f"rejected by {who}" + (f": {comment}" if comment else "")
        ToolCall.objects.filter(pk=row.pk).update(
            status=ToolCallStatus.FAILED, error=message, finished_at=timezone.now(),
            decisions=[*row.decisions, _note(approval, "arguments", "reject", who, comment)])
    else:
        edited = _edited(approval, output)
        arguments = row.arguments
        action = "approve"
        if edited is not None and edited.get("arguments") != row.arguments:
            arguments, action = edited.get("arguments"), "edit"
            if not isinstance(arguments, dict):
                raise DecisionError("content.arguments: must be a JSON object")
            schema = _tool_schema(row)
            problems = schema_problems(arguments, schema) if schema else []
            if problems:
                raise DecisionError(f"content.arguments: {'; '.join(problems)}")
        note = _note(approval, "arguments", action, who, comment,
                     **({"asked": row.arguments} if action == "edit" else {}))
        ToolCall.objects.filter(pk=row.pk).update(status=ToolCallStatus.STARTED, arguments=arguments,
                                                  decisions=[*row.decisions, note])
    return requeue_waiting_step(approval.step_id, actor=who, reason=f"approval #{approval.pk} decided")


def resume_tool_crash(approval: Approval, output: dict[str, Any], who: str) -> bool:
    row = _row(approval, ToolCallStatus.NEEDS_DECISION)
    comment = str(output.get("comment") or "")
    now = timezone.now()
    if not output["approved"]:
        message = f"the step was failed by {who}" + (f": {comment}" if comment else "")
        ToolCall.objects.filter(pk=row.pk).update(
            status=ToolCallStatus.FAILED, error=message, finished_at=now,
            decisions=[*row.decisions, _note(approval, "crash", "fail", who, comment)])
        return resume_waiting_step(approval.step_id, types.Fail({
            "type": "tool_call_failed_by_decision", "retryable": False,
            "message": f"tool {row.tool} (call {row.call_id}, round {row.round}) was cut off by a crash and "
                       f"{message}", "approval_id": approval.pk}), actor=who)
    edited = _edited(approval, output)
    if edited is not None and edited.get("result") is not None:
        result = edited["result"]
        ToolCall.objects.filter(pk=row.pk).update(
            status=ToolCallStatus.COMPLETED, output=result, error="", finished_at=now,
            decisions=[*row.decisions, _note(approval, "crash", "record", who, comment)])
    else:
        ToolCall.objects.filter(pk=row.pk).update(
            status=ToolCallStatus.STARTED, error="",
            decisions=[*row.decisions, _note(approval, "crash", "rerun", who, comment, executions=row.executions)])
    return requeue_waiting_step(approval.step_id, actor=who, reason=f"approval #{approval.pk} decided")


def cut_off(row: ToolCall) -> bool:
    """Whether ``row`` was entered and never came back (its worker died inside the tool)."""
    if row.status != ToolCallStatus.STARTED or row.executions == 0 or row.error:
        return False
    # A person chose to run it again after this many executions: that run is not a crash yet.
    return not any(d.get("kind") == "crash" and d.get("action") == "rerun" and d.get("executions") == row.executions
                   for d in row.decisions)


def cancel_requests(step_id: int) -> None:
    Approval.objects.filter(step_id=step_id, status=ApprovalStatus.PENDING).update(
        status=ApprovalStatus.CANCELLED, decided_at=timezone.now())


def register() -> None:
    register_kind(TOOL_CALL, resume_tool_call)
    register_kind(TOOL_CRASH, resume_tool_crash)
