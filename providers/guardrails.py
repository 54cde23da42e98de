"""Checking an answer: structured output (JSON + JSON Schema) and guardrails.

A guardrail is ``schema`` (the answer is JSON that validates), ``regex`` (``mode:
forbid`` — the default — blocks answers matching ``pattern``; ``mode: require``
blocks answers that do not), ``blocklist`` (none of ``words`` may appear, whole
words, any case) or ``handler`` (a registered handler judges: it gets ``{"text",
"json"}`` as its config and returns ``True``/``False`` or ``{"ok": bool, "reason": str}``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema

from steps.handlers import PermanentError, StepContext, registry


class OutputSchemaError(PermanentError):
    """The answer was not JSON that validates against ``output_schema``, after the allowed retries."""


class GuardrailBlocked(PermanentError):
    """A guardrail with ``on_failure: block`` (or out of retries) refused the answer."""


@dataclass
class Verdict:
    ok: bool
    reason: str = ""


def parse_json_answer(text: str) -> Any:
    """The answer's JSON value; tolerates a Markdown code fence around it."""
    stripped = text.strip()
    fence = re.match(r"^```(?:json)?\s*\n(.*)\n```$", stripped, re.DOTALL)
    if fence:
        stripped = fence.group(1).strip()
    return json.loads(stripped)


def schema_problems(value: Any, schema: dict[str, Any], limit: int = 10) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        problems.append(f"{where}: {error.message}")
        if len(problems) >= limit:
            break
    return problems


def check_structured(text: str, schema: dict[str, Any] | None) -> tuple[Any, list[str]]:
    """Parse and validate a JSON answer: (value, problems)."""
    try:
        value = parse_json_answer(text)
    except json.JSONDecodeError as exc:
        return None, [f"the answer is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
    if schema:
        return value, schema_problems(value, schema)
    return value, []


def judge(rule: dict[str, Any], text: str, value: Any, ctx: StepContext) -> Verdict:
    kind = rule["type"]
    if kind == "schema":
        if value is None:
            try:
                value = parse_json_answer(text)
            except json.JSONDecodeError as exc:
                return Verdict(False, f"not JSON: {exc.msg}")
        problems = schema_problems(value, rule.get("schema") or {})
        return Verdict(not problems, "; ".join(problems))
    if kind == "regex":
        pattern = rule.get("pattern") or ""
        found = re.search(pattern, text) is not None
        if rule.get("mode", "forbid") == "require":
            return Verdict(found, "" if found else f"the answer does not match the required pattern {pattern!r}")
        return Verdict(not found, f"the answer matches the forbidden pattern {pattern!r}" if found else "")
    if kind == "blocklist":
        hits = [w for w in rule.get("words") or []
                if re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text, re.IGNORECASE)]
        return Verdict(not hits, f"the answer contains blocked word(s): {', '.join(hits)}" if hits else "")
    if kind == "handler":
        fn = registry.get(rule["handler"])
        judged = fn(StepContext(
            run_id=ctx.run_id, step=ctx.step, key=ctx.key, attempt=ctx.attempt, idempotency_key=ctx.idempotency_key,
            step_idempotency_key=ctx.step_idempotency_key, input=ctx.input, config={"text": text, "json": value},
            log=ctx.log, workflow=ctx.workflow, extra={"guardrail": rule["handler"]}, heartbeat=ctx.heartbeat))
        if isinstance(judged, dict):
            return Verdict(bool(judged.get("ok")), str(judged.get("reason") or ""))
        return Verdict(bool(judged), "" if judged else f"rejected by handler {rule['handler']!r}")
    raise PermanentError(f"guardrails: unknown type {kind!r}")
