"""Spans of an llm step attempt's LLM calls and tool calls (``runs.engine.tracing``), with the
OpenTelemetry GenAI semantic conventions: ``chat {model}`` client spans carrying
``gen_ai.system``, ``gen_ai.request.model`` and ``gen_ai.usage.*_tokens``; ``execute_tool
{name}`` spans carrying ``gen_ai.tool.name``."""

from __future__ import annotations

from collections.abc import Iterator

from runs.engine.tracing import ChildSpan
from steps.models import StepExecution

from .models import LLMCall, LLMCallStatus, ProviderKind, ToolCall, ToolCallStatus

# gen_ai.system values (OpenTelemetry GenAI conventions): an OpenAI-compatible server speaks OpenAI.
GEN_AI_SYSTEM: dict[str, str] = {ProviderKind.OPENAI: "openai", ProviderKind.OPENAI_COMPATIBLE: "openai",
                 ProviderKind.ANTHROPIC: "anthropic"}


def attempt_spans(step: StepExecution, attempt: int) -> Iterator[ChildSpan]:
    if step.type != "llm":
        return
    for call in LLMCall.objects.filter(step_id=step.pk, step_attempt=attempt).order_by("id"):
        system = GEN_AI_SYSTEM.get(call.kind, call.kind)
        yield ChildSpan(
            name=f"chat {call.model}", key=f"llm:{call.pk}", start=call.started_at, end=call.finished_at,
            client=True, error="" if call.status == LLMCallStatus.SUCCEEDED else (call.error or call.status),
            attributes={
                "gen_ai.operation.name": "chat", "gen_ai.system": system, "gen_ai.provider.name": system,
                "gen_ai.request.model": call.model,
                "gen_ai.usage.input_tokens": call.input_tokens, "gen_ai.usage.output_tokens": call.output_tokens,
                "stevora.llm.provider": call.provider_name, "stevora.llm.round": call.round,
                "stevora.llm.try": call.try_number, "stevora.llm.status": call.status,
                "stevora.llm.cost_usd": float(call.cost_usd), "http.response.status_code": call.http_status,
                "error.type": call.error_kind or None,
            })
    for tool in ToolCall.objects.filter(step_id=step.pk, step_attempt=attempt).order_by("id"):
        yield ChildSpan(
            name=f"execute_tool {tool.tool}", key=f"tool:{tool.pk}", start=tool.started_at, end=tool.finished_at,
            error=tool.error if tool.status == ToolCallStatus.FAILED else "",
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool.tool,
                        "gen_ai.tool.call.id": tool.call_id, "stevora.tool.handler": tool.handler,
                        "stevora.tool.round": tool.round, "stevora.tool.status": tool.status})
