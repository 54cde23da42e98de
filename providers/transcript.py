"""An ``llm`` step's conversation as a transcript, the way engineers read agent traces.

Built from the rows the agent loop leaves (``providers.step_type``): the step's rendered
input holds the system prompt and the first messages; each model turn (a *round*) has
one ``LLMCall`` per HTTP attempt, the answered one ``succeeded`` and the others failed,
abandoned or superseded; each tool call the model asked for has a ``ToolCall`` row with
its arguments, result and how often its handler ran. A message the loop added between
rounds (an answer rejected by the output schema or a guardrail) is read back from the
next round's recorded request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.template.loader import render_to_string
from django.utils.safestring import SafeString

from runs.models import RunEvent
from steps.models import StepExecution

from .models import LLMCall, LLMCallStatus, ToolCall


@dataclass
class CallView:
    """One HTTP attempt that did not give the round's answer."""

    provider: str
    model: str
    status: str
    http_status: int | None
    error: str
    latency_ms: float | None
    step_attempt: int
    try_number: int


@dataclass
class ToolView:
    call_id: str
    name: str
    handler: str
    arguments: str
    status: str
    result: str
    error: str
    executions: int
    effects: str = ""
    replayed: bool = False
    decisions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Turn:
    role: str  # system | user | assistant | tool | feedback
    text: str = ""
    round: int | None = None
    provider: str = ""
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal | None = None
    latency_ms: float | None = None
    step_attempt: int | None = None
    fallback_from: list[str] = field(default_factory=list)  # providers tried before the one that answered
    failed: list[CallView] = field(default_factory=list)
    tools: list[ToolView] = field(default_factory=list)
    answered: bool = True
    replayed: bool = False  # a replayed fork's answer, copied from the source run's record


def _pretty(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _text(content: Any) -> str:
    """A message's text: a string, or the text blocks of a content list (Anthropic's shape)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")
    return "" if content is None else _pretty(content)


def _added_user_message(call: LLMCall | None) -> str:
    """The user message the loop appended before this round (its request's last message)."""
    body = (call.request or {}).get("body") if call is not None else None
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return ""
    last = messages[-1]
    return _text(last.get("content")) if last.get("role") == "user" else ""


def build(step: StepExecution) -> list[Turn]:
    """The step's turns in order: the prompt, then per round the answer and its tool calls."""
    config = step.input if isinstance(step.input, dict) else {}
    turns: list[Turn] = []
    if config.get("system"):
        turns.append(Turn("system", _text(config["system"])))
    for message in config.get("messages") or []:
        if isinstance(message, dict):
            turns.append(Turn(str(message.get("role", "user")), _text(message.get("content"))))
    calls_by_round: dict[int, list[LLMCall]] = {}
    for call in LLMCall.objects.filter(step_id=step.pk).order_by("id"):
        calls_by_round.setdefault(call.round, []).append(call)
    tools_by_round: dict[int, list[ToolCall]] = {}
    for tool in ToolCall.objects.filter(step_id=step.pk).order_by("id"):
        tools_by_round.setdefault(tool.round, []).append(tool)
    rounds = sorted(set(calls_by_round) | set(tools_by_round))
    for round_number in rounds:
        calls = calls_by_round.get(round_number, [])
        answer = next((c for c in calls if c.status == LLMCallStatus.SUCCEEDED), None)
        if round_number > 1 and not tools_by_round.get(round_number - 1):
            # No tools asked last round, yet another round: the loop rejected the answer and said why.
            feedback = _added_user_message(answer or (calls[0] if calls else None))
            if feedback:
                turns.append(Turn("feedback", feedback, round=round_number))
        turn = Turn("assistant", round=round_number, answered=answer is not None)
        turn.failed = [CallView(c.provider_name, c.model, c.status, c.http_status, c.error, c.latency_ms,
                                c.step_attempt, c.try_number) for c in calls if c is not answer]
        if answer is not None:
            result = answer.result or {}
            turn.text = str(result.get("text") or "")
            turn.provider, turn.model = answer.provider_name, answer.model
            turn.input_tokens, turn.output_tokens = answer.input_tokens, answer.output_tokens
            turn.cost_usd, turn.latency_ms, turn.step_attempt = answer.cost_usd, answer.latency_ms, answer.step_attempt
            turn.replayed = answer.replayed_from_id is not None
            # Providers of this attempt that were tried first and did not answer: a fallback.
            tried = [c.provider_name for c in calls if c.step_attempt == answer.step_attempt and c.pk < answer.pk]
            turn.fallback_from = [p for p in dict.fromkeys(tried) if p != answer.provider_name]
        for tool in tools_by_round.get(round_number, []):
            turn.tools.append(ToolView(tool.call_id, tool.tool, tool.handler, _pretty(tool.arguments), tool.status,
                                       _pretty(tool.output), tool.error, tool.executions, tool.effects,
                                       tool.replayed_from_id is not None, list(tool.decisions or [])))
        turns.append(turn)
    return turns


def render(step: StepExecution) -> SafeString:
    """The transcript as HTML for the admin's run page (the template escapes every value)."""
    output = step.output if isinstance(step.output, dict) else {}
    skipped = [r for r in output.get("route") or [] if isinstance(r, dict) and r.get("outcome") == "skipped"]
    live = step.status in ("pending", "ready", "running") and _streams(step)
    return render_to_string("providers/transcript.html", {
        "step": step, "turns": build(step), "skipped": skipped,
        "final_json": _pretty(output["json"]) if "json" in output else "",
        "live": live, "history_after": _last_history_id(step) if live else 0,
    })


def _last_history_id(step: StepExecution) -> int:
    """The watcher starts after the history this page already shows (the text: from its start)."""
    return RunEvent.objects.filter(run_id=step.run_id).order_by("-id").values_list("id", flat=True).first() or 0


def _streams(step: StepExecution) -> bool:
    """Does the step's definition ask for a streamed answer (``stream: true``)?"""
    definition = step.run.workflow.definition if step.run_id else {}
    for raw in (definition or {}).get("steps") or []:
        if isinstance(raw, dict) and raw.get("name") == step.name:
            return bool(raw.get("stream"))
    return False
