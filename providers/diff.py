"""What differs between two runs' ``llm`` steps: the model conversation and the tool calls.

Plugged into ``runs.services.diff`` (``register_step_differ("llm", differ)``). Per round:
the provider and model that answered, a short digest of the question asked (it changes
when anything before it changed: the input, the prompt, an earlier answer or tool
result) and the answer (text and tool calls asked for). Tool calls are matched by round
and their order in it (call ids are the model's and differ between vendors). A step
with no recorded calls on one side (a step a fork copied) is not compared here: its
input and output are.
"""

from __future__ import annotations

from typing import Any

from runs.services.diff import json_differences
from steps.models import StepExecution

from .models import LLMCall, LLMCallStatus, ToolCall


def conversation(step: StepExecution) -> dict[str, Any]:
    rounds: dict[str, Any] = {}
    for call in LLMCall.objects.filter(step_id=step.pk, status=LLMCallStatus.SUCCEEDED).order_by("round"):
        result = call.result or {}
        rounds[f"round {call.round}"] = {
            "provider": call.provider_name, "model": call.model, "asked": call.request_digest[:12],
            "answer": {"text": result.get("text") or "",
                       "tool_calls": [{"name": c.get("name"), "arguments": c.get("arguments")}
                                      for c in result.get("tool_calls") or []]},
        }
    return rounds


def tool_calls(step: StepExecution) -> dict[str, Any]:
    calls: dict[str, Any] = {}
    seen: dict[int, int] = {}
    for row in ToolCall.objects.filter(step_id=step.pk).order_by("round", "id"):
        index = seen.get(row.round, 0)
        seen[row.round] = index + 1
        calls[f"round {row.round} #{index + 1}"] = {
            "tool": row.tool, "arguments": row.arguments, "status": row.status, "output": row.output,
            **({"error": row.error} if row.error else {})}
    return calls


def differ(a: StepExecution, b: StepExecution) -> list[dict[str, Any]]:
    talk_a, talk_b = conversation(a), conversation(b)
    if not talk_a or not talk_b:
        return []
    found = [{"field": "conversation", **d} for d in json_differences(talk_a, talk_b)]
    found.extend({"field": "tool_calls", **d} for d in json_differences(tool_calls(a), tool_calls(b)))
    return found
