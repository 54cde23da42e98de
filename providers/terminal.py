"""What ``show_run`` draws under the timeline for an ``llm`` step: the agent's work.

Each model turn (round) with the provider and model that answered, its tokens, cost and
latency; the attempts that failed before it and the fallback to the next provider; each
tool call with its arguments and result; the providers the chain skipped (no key, circuit
open). Everything comes from the recorded rows (LLMCall, ToolCall) and the step's output,
so a failed or still running step shows what happened so far.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from runs.cli import shorten
from steps.models import StepExecution

from .models import LLMCall, LLMCallStatus, ToolCall, ToolCallStatus

TEXT_LIMIT = 90  # characters of an answer, an argument list or a tool result on one line


def agent_lines(step: StepExecution) -> list[str]:
    calls = list(LLMCall.objects.filter(step_id=step.pk).order_by("id"))
    tools = list(ToolCall.objects.filter(step_id=step.pk).order_by("id"))
    if not calls and not tools:
        return []
    answered = [c for c in calls if c.status == LLMCallStatus.SUCCEEDED]
    tokens_in = sum(c.input_tokens for c in calls)
    tokens_out = sum(c.output_tokens for c in calls)
    cost = sum((c.cost_usd for c in calls), Decimal(0))
    rounds = max([c.round for c in calls] + [t.round for t in tools])
    head = (f"{step.key}  llm · {_plural(rounds, 'model turn')} · {_plural(len(tools), 'tool call')} · "
            f"{tokens_in} in + {tokens_out} out tokens · {_usd(cost)}")
    lines = [head]
    skipped = _skipped(step.output)
    if skipped:
        lines.append(f"  skipped in the last turn: {skipped}")
    multiple_attempts = len({c.step_attempt for c in calls}) > 1
    for attempt in sorted({c.step_attempt for c in calls} | {t.step_attempt for t in tools}):
        if multiple_attempts:
            lines.append(f"  step attempt {attempt}")
        for round_number in sorted({c.round for c in calls if c.step_attempt == attempt}
                                   | {t.round for t in tools if t.step_attempt == attempt}):
            here = [c for c in calls if c.step_attempt == attempt and c.round == round_number]
            lines.extend(_round_lines(round_number, here))
            lines.extend(_tool_lines([t for t in tools if t.step_attempt == attempt and t.round == round_number]))
    if not answered and step.error:
        lines.append(f"  ✘ {shorten(str(step.error.get('message', '')), TEXT_LIMIT)}")
    return lines


def _round_lines(number: int, calls: list[LLMCall]) -> list[str]:
    lines = []
    label = f"turn {number}"
    pad = " " * len(label)
    for i, call in enumerate(calls):
        prefix = f"  {label if i == 0 else pad}  "
        who = f"{call.provider_name} ({call.model})"
        if call.try_number > 1:
            who += f" try {call.try_number}"
        if call.status == LLMCallStatus.SUCCEEDED and call.replayed_from_id:
            lines.append(f"{prefix}↺ {who} · replayed from the source run's record (not asked, not charged)")
            said = _answer(call.result)
            if said:
                lines.append(f"{pad}    {said}")
            continue
        if call.status == LLMCallStatus.SUCCEEDED:
            lines.append(f"{prefix}✔ {who} · {call.input_tokens} in + {call.output_tokens} out tokens · "
                         f"{_usd(call.cost_usd)}{_latency(call)}")
            said = _answer(call.result)
            if said:
                lines.append(f"{pad}    {said}")
            continue
        nxt = calls[i + 1] if i + 1 < len(calls) else None
        then = ""
        if nxt is not None:
            then = (f" → retried on {nxt.provider_name}" if nxt.provider_name == call.provider_name
                    else f" → fell back to {nxt.provider_name}")
        reason = call.error or call.status
        kind = f" ({call.error_kind})" if call.error_kind else ""
        mark = "✘" if call.status == LLMCallStatus.FAILED else "·"
        lines.append(f"{prefix}{mark} {who} {call.status}: {shorten(reason, TEXT_LIMIT)}{kind}{_latency(call)}{then}")
    return lines


def _tool_lines(tools: list[ToolCall]) -> list[str]:
    lines = []
    for tool in tools:
        args = ", ".join(f"{key}={_json(value)}" for key, value in (tool.arguments or {}).items()) \
            if isinstance(tool.arguments, dict) else _json(tool.arguments)
        ran = f" (ran {tool.executions}×)" if tool.executions > 1 else ""
        if tool.replayed_from_id:
            ran = " (replayed from the source run's record)"
        decided = "; ".join(f"{d.get('action')} by {d.get('by')}" for d in tool.decisions or [])
        if decided:
            ran += f" [decided: {decided}]"
        call = f"⚙ {tool.tool}({shorten(args, TEXT_LIMIT)}){ran}"
        if tool.status == ToolCallStatus.AWAITING_APPROVAL:
            result = "⏸ waiting for approval of its arguments"
        elif tool.status == ToolCallStatus.NEEDS_DECISION:
            result = "⏸ cut off by a crash (irreversible): waiting for a decision"
        elif tool.status == ToolCallStatus.COMPLETED:
            result = "→ " + shorten(_json(tool.output), TEXT_LIMIT)
        elif tool.status == ToolCallStatus.FAILED:
            result = "✘ " + shorten(tool.error or "failed", TEXT_LIMIT)
        else:
            result = "… running"
        lines.append(f"          {call}")
        lines.append(f"            {result}")
    return lines


def _answer(result: Any) -> str:
    """The answer's text on one line; a turn that only asked for tools says which."""
    if not isinstance(result, dict):
        return ""
    text = str(result.get("text") or "").strip()
    if text:
        return "“" + shorten(text, TEXT_LIMIT) + "”"
    asked = [str(t.get("name")) for t in result.get("tool_calls") or [] if isinstance(t, dict)]
    return f"asked for {', '.join(asked)}" if asked else ""


def _skipped(output: Any) -> str:
    """Providers the chain passed over without a request (no key, circuit open), from the route."""
    if not isinstance(output, dict):
        return ""
    parts = [f"{r.get('provider')} ({r.get('reason', '')})" for r in output.get("route") or []
             if isinstance(r, dict) and r.get("outcome") == "skipped"]
    return shorten(", ".join(parts), 2 * TEXT_LIMIT)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _usd(amount: Decimal | float) -> str:
    return f"${Decimal(amount):.6f}"


def _latency(call: LLMCall) -> str:
    if call.latency_ms is None:
        return ""
    ms = call.latency_ms
    return f" · {ms:.0f}ms" if ms >= 1 else f" · {ms:.2f}ms"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
