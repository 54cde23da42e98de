"""The ``llm`` step: a durable agent loop over the fallback chain.

Each model turn is a *round*. Before a round asks a provider, the recorded answer of
(step, round) is looked up (``LLMCall`` with status ``succeeded``, unique per round);
before a tool runs, its checkpoint (``ToolCall``, unique per step, round and call id)
is looked up. So a worker killed in round 3 leaves rounds 1–2 on the record, and the
re-executed step replays them — no second payment, no second tool execution — and
carries on with round 3 (DBOS-style: look the stored result up before acting).

Output::

    {"text": "...",                # or "json": <parsed value> with response_format json / output_schema
     "provider": "openai", "model": "gpt-4o-mini",
     "usage": {"input_tokens": 812, "output_tokens": 96, "cost_usd": 0.000179, "llm_calls": 3},
     "tool_calls": [{"round", "id", "name", "arguments", "status", "output"}],
     "rounds": 3, "route": [{"provider", "outcome", "reason"}], "warnings": [...]}
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import jsonschema
from django.db import IntegrityError
from django.db.models import Count, F, Sum
from django.utils import timezone

from runs.engine.heartbeat import heartbeat
from steps import live, types
from steps.handlers import PermanentError, RetryableError, StepContext, registry
from steps.models import StepExecution
from steps.templating import render_value

from . import mcp_tools, tool_decisions
from .chain import Answer, RateLimitWait, Scope, complete
from .guardrails import GuardrailBlocked, OutputSchemaError, check_structured, judge, schema_problems
from .models import LLMCall, LLMCallStatus, ToolCall, ToolCallStatus, ToolEffects
from .registry import ResolveError, resolve
from .replay import Recorded
from .wire import ChatRequest, ChatResult

logger = logging.getLogger("stevora.llm")

DEFAULT_MAX_TOOL_ROUNDS = 10
DEFAULT_SCHEMA_RETRIES = 2
DEFAULT_GUARDRAIL_RETRIES = 2
_PASSTHROUGH = ("temperature", "max_tokens", "response_format", "output_schema", "max_schema_retries", "tools",
                "max_tool_rounds", "guardrails", "fallback", "stream", "mcp_servers", "on_rate_limit")
# The longest a rate-limited step is handed back for at once (no countdown past a minute): a
# longer wait is checked again then.
MAX_HAND_BACK_SECONDS = 60.0


class ToolRoundsExceeded(PermanentError):
    pass


class ReplayDiverged(PermanentError):
    """A re-executed step reached a round whose recorded answer was given to another conversation."""


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def tool_name(tool: dict[str, Any]) -> str:
    return tool.get("name") or re.sub(r"[^A-Za-z0-9_-]", "_", tool["handler"])[:64]


@dataclass
class Tool:
    name: str
    handler: str
    description: str
    parameters: dict[str, Any]
    # Not declared: irreversible — the engine cannot know a handler is safe to run twice, and
    # wrongly re-running a payment costs more than asking a person once after a crash.
    effects: str = ToolEffects.IRREVERSIBLE
    requires_approval: bool = False
    mcp_server: dict[str, Any] | None = None  # a tool of an MCP server (``handler`` is "mcp:<server>/<tool>")
    mcp_tool: str = ""


class LLMType(types.StepType):
    name = "llm"
    work = True

    def render(self, spec: Any, context: dict[str, Any]) -> Any:
        raw = spec.raw
        out: dict[str, Any] = {k: raw[k] for k in _PASSTHROUGH if k in raw}
        for key in ("model", "provider", "chain"):
            if key in raw:
                out[key] = _as_text(render_value(raw[key], context))
        if raw.get("system") is not None:
            out["system"] = _as_text(render_value(raw["system"], context))
        out["messages"] = [{"role": m["role"], "content": _as_text(render_value(m["content"], context))}
                           for m in raw["messages"]]
        return out

    def execute(self, invocation: types.Invocation) -> Any:
        return Agent(invocation).run()

    def cancel(self, step: Any) -> None:
        """The step was cancelled while parked for a tool decision: its request closes."""
        tool_decisions.cancel_requests(step.pk)

    def check(self, raw: dict[str, Any], handler_exists: Any) -> list[tuple[str, str]]:
        return definition_errors(raw, handler_exists)


def _schema_error(schema: Any) -> str | None:
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"not a valid JSON Schema: {exc.message}"
    return None


def definition_errors(raw: dict[str, Any], handler_exists: Any) -> list[tuple[str, str]]:
    """What the workflow JSON Schema cannot check about an llm step, by path below the step."""
    errors: list[tuple[str, str]] = []
    if "output_schema" in raw:
        if raw.get("response_format") == "text":
            errors.append((".response_format", "an output_schema needs json answers: use json or leave it out"))
        problem = _schema_error(raw["output_schema"])
        if problem:
            errors.append((".output_schema", problem))
    names: dict[str, int] = {}
    for i, tool in enumerate(raw.get("tools") or []):
        if handler_exists is not None and not handler_exists(tool["handler"]):
            errors.append((f".tools[{i}].handler", f"no handler registered under {tool['handler']!r}"))
        name = tool_name(tool)
        if name in names:
            errors.append((f".tools[{i}].name", f"tool name {name!r} is already used by tools[{names[name]}]"))
        names.setdefault(name, i)
        if "parameters" in tool:
            problem = _schema_error(tool["parameters"])
            if problem:
                errors.append((f".tools[{i}].parameters", problem))
    servers: dict[str, int] = {}
    for i, server in enumerate(raw.get("mcp_servers") or []):
        if bool(server.get("url")) == bool(server.get("command")):
            errors.append((f".mcp_servers[{i}]", "give either url (streamable HTTP) or command (stdio), not both"))
        if server["name"] in servers:
            errors.append((f".mcp_servers[{i}].name",
                           f"server name {server['name']!r} is already used by mcp_servers[{servers[server['name']]}]"))
        servers.setdefault(server["name"], i)
    needs = {"regex": "pattern", "blocklist": "words", "handler": "handler", "schema": "schema"}
    for i, rule in enumerate(raw.get("guardrails") or []):
        path, kind = f".guardrails[{i}]", rule["type"]
        if not rule.get(needs[kind]):
            errors.append((f"{path}.{needs[kind]}", f"a {kind} guardrail needs {needs[kind]}"))
            continue
        if kind == "regex":
            try:
                re.compile(rule["pattern"])
            except re.error as exc:
                errors.append((f"{path}.pattern", f"not a valid regular expression: {exc}"))
        elif kind == "handler" and handler_exists is not None and not handler_exists(rule["handler"]):
            errors.append((f"{path}.handler", f"no handler registered under {rule['handler']!r}"))
        elif kind == "schema":
            problem = _schema_error(rule["schema"])
            if problem:
                errors.append((f"{path}.schema", problem))
    return errors


class Agent:
    def __init__(self, invocation: types.Invocation) -> None:
        self.inv = invocation
        self.ctx = invocation.ctx
        self.cfg: dict[str, Any] = invocation.ctx.config
        step = invocation.step
        self.step_id = step.pk
        run = invocation.run
        # The first claim of a step has nothing recorded to replay or to mark abandoned.
        self.first_attempt = step.attempt <= 1
        self.scope = Scope(step_id=step.pk, run_id=step.run_id, step_attempt=step.attempt,
                           budgeted=run.max_cost_usd is not None or run.max_tokens is not None,
                           first_attempt=self.first_attempt, step_key=step.key,
                           on_rate_limit=self.cfg.get("on_rate_limit") or "fallback")
        if self.cfg.get("stream"):
            self.scope.stream = True
            self.scope.live = self.publish
        try:
            self.route = resolve(self.cfg)
        except ResolveError as exc:
            raise PermanentError(f"llm step {step.name!r}: {exc}") from None
        self.tools: dict[str, Tool] = {}
        for raw in self.cfg.get("tools") or []:
            if raw["handler"] not in registry:
                raise PermanentError(f"tools: no handler registered under {raw['handler']!r}")
            tool = Tool(tool_name(raw), raw["handler"], raw.get("description") or "",
                        raw.get("parameters") or {"type": "object", "properties": {}},
                        effects=raw.get("effects") or ToolEffects.IRREVERSIBLE,
                        requires_approval=bool(raw.get("requires_approval")))
            self.tools[tool.name] = tool
        # A fork with replay: recorded answers from its source run's record while the requests match.
        self.recorded = Recorded(run, step)
        self.load_mcp_tools(step)
        self.schema = self.cfg.get("output_schema")
        self.json = self.cfg.get("response_format") == "json" or self.schema is not None
        # A previous attempt's worker died mid-request: its rows stay as evidence, marked so.
        if not self.first_attempt:
            LLMCall.objects.filter(step_id=step.pk, status=LLMCallStatus.STARTED, step_attempt__lt=step.attempt).update(
                status=LLMCallStatus.ABANDONED, error="the worker of this attempt was lost before the answer",
                finished_at=timezone.now())

    def load_mcp_tools(self, step: Any) -> None:
        """Tools of the step's MCP servers: fetched when the step first starts and recorded in its
        ``state``; a re-executed step uses the recorded list (the conversation it replays)."""
        servers = {s["name"]: s for s in self.cfg.get("mcp_servers") or []}
        if not servers:
            return
        state = step.state if isinstance(step.state, dict) else {}
        recorded = state.get("mcp_tools")
        if recorded is None:
            fetched = [t for server in servers.values() for t in mcp_tools.list_tools(server)]
            # A concurrent attempt may have recorded its list meanwhile: the first one recorded wins.
            current = StepExecution.objects.filter(pk=step.pk).values_list("state", flat=True).first() or {}
            recorded = current.get("mcp_tools") if isinstance(current, dict) else None
            if recorded is None:
                recorded = fetched
                state = {**(current if isinstance(current, dict) else state), "mcp_tools": recorded}
                StepExecution.objects.filter(pk=step.pk).update(state=state)
                step.state = state
        for t in recorded:
            if t["name"] in self.tools:
                raise PermanentError(f"mcp_servers {t['server']!r}: tool {t['name']!r} has the name of another tool")
            self.tools[t["name"]] = Tool(t["name"], f"mcp:{t['server']}/{t['tool']}", t["description"],
                                         t["parameters"], mcp_server=servers.get(t["server"]), mcp_tool=t["tool"])

    def publish(self, call_id: int, provider: str, round_number: int, kind: str, text: str) -> None:
        """A streamed answer's text, for watchers only (``steps.live``); never part of the record."""
        live.publish(self.ctx.run_id, step=self.ctx.key, attempt=self.scope.step_attempt, round=round_number,
                     provider=provider, text=text, call=call_id, kind=kind)

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        conversation: list[dict[str, Any]] = list(self.cfg["messages"])
        max_tool_rounds = int(self.cfg.get("max_tool_rounds") or DEFAULT_MAX_TOOL_ROUNDS)
        schema_retries_left = int(self.cfg.get("max_schema_retries", DEFAULT_SCHEMA_RETRIES))
        guardrails: list[dict[str, Any]] = self.cfg.get("guardrails") or []
        guard_retries = [int(g.get("max_retries", DEFAULT_GUARDRAIL_RETRIES)) for g in guardrails]
        warnings: list[dict[str, Any]] = []
        tool_rounds = 0
        round_number = 0
        while True:
            round_number += 1
            if self.step_id in heartbeat.lost:
                raise RetryableError("this worker lost the step's lease; another attempt owns it now")
            answer = self.turn(round_number, conversation)
            result = answer.result
            conversation.append(self.assistant_message(result))
            if result.tool_calls:
                tool_rounds += 1
                if tool_rounds > max_tool_rounds:
                    raise ToolRoundsExceeded(f"the model still asked for tools after max_tool_rounds={max_tool_rounds}")
                for call in result.tool_calls:
                    conversation.append(self.run_tool(round_number, call))
                continue
            value = None
            if self.json:
                value, problems = check_structured(result.text, self.schema)
                if problems:
                    if schema_retries_left <= 0:
                        raise OutputSchemaError("the answer does not match output_schema: " + "; ".join(problems),
                                                details={"problems": problems, "answer": result.text[:2000]})
                    schema_retries_left -= 1
                    conversation.append({"role": "user", "content": (
                        "Your answer was rejected: " + "; ".join(problems)
                        + ". Answer again with only the corrected JSON.")})
                    continue
            feedback = self.check_guardrails(guardrails, guard_retries, result.text, value, warnings)
            if feedback:
                conversation.append({"role": "user", "content": feedback})
                continue
            return self.output(answer, value, round_number, warnings)

    def check_guardrails(self, guardrails: list[dict[str, Any]], retries: list[int], text: str, value: Any,
                         warnings: list[dict[str, Any]]) -> str | None:
        for index, rule in enumerate(guardrails):
            verdict = judge(rule, text, value, self.ctx)
            if verdict.ok:
                continue
            mode = rule.get("on_failure", "block")
            label = f"guardrails[{index}] ({rule['type']})"
            if mode == "warn":
                warnings.append({"guardrail": index, "type": rule["type"], "reason": verdict.reason})
                self.ctx.log.warning("%s failed (warn only): %s", label, verdict.reason)
                continue
            if mode == "retry_with_feedback" and retries[index] > 0:
                retries[index] -= 1
                return (f"Your answer was rejected by a check: {verdict.reason}. "
                        "Answer again, fixing this.")
            raise GuardrailBlocked(f"{label} blocked the answer: {verdict.reason}",
                                   details={"guardrail": index, "reason": verdict.reason})
        return None

    # --- one model turn -----------------------------------------------------------------

    def turn(self, round_number: int, conversation: list[dict[str, Any]]) -> Answer:
        request = ChatRequest(
            messages=[dict(m) for m in conversation], system=self.cfg.get("system"),
            tools=[{"name": t.name, "description": t.description, "parameters": t.parameters}
                   for t in self.tools.values()],
            temperature=self.cfg.get("temperature"), max_tokens=self.cfg.get("max_tokens"),
            json=self.json, schema=self.schema,
        )
        digest = request.digest()
        recorded = None if self.first_attempt else (
            LLMCall.objects.filter(step_id=self.step_id, round=round_number, status=LLMCallStatus.SUCCEEDED)
            .values("result", "provider_name", "model", "request_digest", "replayed_from").first())
        if recorded is not None and recorded["result"] is not None:
            if recorded["request_digest"] and recorded["request_digest"] != digest:
                # The conversation that led here differs from the recorded one (a guardrail judge
                # that changed its mind, a tool that is not deterministic in its error): replaying
                # an answer to another question would be a guess.
                raise ReplayDiverged(
                    f"round {round_number} was answered for a different conversation than this attempt's; "
                    "the step cannot be resumed safely — start a new run")
            self.recorded.saw_own(round_number, recorded["replayed_from"] is not None)
            result = ChatResult.from_json(recorded["result"])
            return Answer(result, recorded["provider_name"], result.model or recorded["model"],
                          [{"provider": recorded["provider_name"], "outcome": "replayed"}], replayed=True)
        replayed = self.recorded.answer(round_number, digest, self.scope.step_attempt)
        if replayed is not None:
            return replayed
        self.scope.request_digest = digest
        try:
            return complete(self.route, request, self.scope, round_number)
        except RateLimitWait as exc:
            if round_number == 1:
                # Nothing recorded yet: give the step back untouched until the window opens,
                # holding no worker. A later round keeps its attempt's replay chain: it retries
                # after the wait as an ordinary retryable failure (RetryableError.retry_after).
                raise types.HandBack(str(exc), delay=min(float(exc.retry_after or 1.0),
                                                          MAX_HAND_BACK_SECONDS)) from None
            raise

    @staticmethod
    def assistant_message(result: ChatResult) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": result.text}
        if result.tool_calls:
            message["tool_calls"] = [{"id": c["id"], "name": c["name"], "arguments": c.get("arguments") or {},
                                      "raw_arguments": c.get("raw_arguments")} for c in result.tool_calls]
        return message

    # --- one tool call ------------------------------------------------------------------

    def run_tool(self, round_number: int, call: dict[str, Any]) -> dict[str, Any]:
        call_id, name = call["id"], call["name"]
        row = ToolCall.objects.filter(step_id=self.step_id, round=round_number, call_id=call_id).first()
        if row is not None and row.status in (ToolCallStatus.COMPLETED, ToolCallStatus.FAILED):
            self.recorded.saw_own(round_number, row.replayed_from_id is not None)
            return self.tool_message(row)
        tool = self.tools.get(name)
        arguments = call.get("arguments")
        problem = None
        if tool is None:
            problem = f"unknown tool {name!r}; the tools are: {', '.join(self.tools) or 'none'}"
        elif call.get("arguments_error") or arguments is None:
            problem = call.get("arguments_error") or "arguments missing"
        else:
            problems = schema_problems(arguments, tool.parameters)
            if problems:
                problem = "invalid arguments: " + "; ".join(problems)
        key = f"{self.ctx.run_id}:{self.ctx.key}:tool:{round_number}:{call_id}"
        if row is None and problem is None and tool is not None:
            copied = self.recorded.tool(round_number, call_id, name, arguments, key=key, effects=tool.effects,
                                        handler=tool.handler, step_attempt=self.scope.step_attempt)
            if copied is not None:  # the source run's result: the handler is not entered
                return self.tool_message(copied)
        if row is None:
            ask_first = tool is not None and tool.requires_approval and problem is None
            try:
                row = ToolCall.objects.create(
                    step_id=self.step_id, round=round_number, call_id=call_id, tool=name,
                    handler=tool.handler if tool else "", arguments=arguments if arguments is not None else {},
                    step_attempt=self.scope.step_attempt, idempotency_key=key, executions=0,
                    effects=tool.effects if tool else ToolEffects.READ_ONLY,
                    status=ToolCallStatus.AWAITING_APPROVAL if ask_first else ToolCallStatus.STARTED)
            except IntegrityError:  # a concurrent attempt of this step got here first
                row = ToolCall.objects.get(step_id=self.step_id, round=round_number, call_id=call_id)
                if row.status in (ToolCallStatus.COMPLETED, ToolCallStatus.FAILED):
                    return self.tool_message(row)
        if problem is not None or tool is None:
            self._finish_tool(row, ToolCallStatus.FAILED, error=problem or "unknown tool")
            return self.tool_message(row)
        if row.status == ToolCallStatus.AWAITING_APPROVAL:
            raise tool_decisions.park(self.inv, row, tool_decisions.TOOL_CALL)
        if row.status == ToolCallStatus.NEEDS_DECISION:
            raise tool_decisions.park(self.inv, row, tool_decisions.TOOL_CRASH)
        if tool_decisions.cut_off(row):
            # Its worker died inside the tool: did it take effect? Only the tool's effects class knows.
            if row.effects == ToolEffects.IRREVERSIBLE:
                ToolCall.objects.filter(pk=row.pk, status=ToolCallStatus.STARTED).update(
                    status=ToolCallStatus.NEEDS_DECISION)
                row.status = ToolCallStatus.NEEDS_DECISION
                raise tool_decisions.park(self.inv, row, tool_decisions.TOOL_CRASH)
            self.ctx.log.warning("tool %s (%s) was cut off by a crash; running it again with key %s",
                                 row.tool, row.effects, row.idempotency_key)
        # An approved call runs with the arguments the person approved (maybe edited).
        arguments = row.arguments
        # At-least-once for read_only/idempotent tools: a row still ``started`` runs again, with the same key.
        ToolCall.objects.filter(pk=row.pk).update(executions=F("executions") + 1, step_attempt=self.scope.step_attempt,
                                                  error="")
        ctx = StepContext(
            run_id=self.ctx.run_id, step=self.ctx.step, key=self.ctx.key, attempt=self.ctx.attempt,
            idempotency_key=key, step_idempotency_key=self.ctx.step_idempotency_key, input=self.ctx.input,
            config=arguments, log=self.ctx.log, workflow=self.ctx.workflow,
            extra={"tool": name, "round": round_number, "call_id": call_id}, heartbeat=self.ctx.heartbeat)
        try:
            if tool.mcp_server is not None:
                output = mcp_tools.call_tool(tool.mcp_server, tool.mcp_tool, arguments or {})
            else:
                output = registry.get(tool.handler)(ctx)
            json.dumps(output)
        except PermanentError as exc:
            self._finish_tool(row, ToolCallStatus.FAILED, error=str(exc) or type(exc).__name__)
            return self.tool_message(row)
        except (TypeError, ValueError) as exc:
            self._finish_tool(row, ToolCallStatus.FAILED, error=f"tool output is not JSON-serialisable: {exc}")
            return self.tool_message(row)
        except Exception as exc:
            # Transient or a bug: the step's retry policy decides; the row stays started and runs again.
            ToolCall.objects.filter(pk=row.pk).update(error=f"{type(exc).__name__}: {exc}"[:4000])
            raise
        self._finish_tool(row, ToolCallStatus.COMPLETED, output=output)
        return self.tool_message(row)

    @staticmethod
    def _finish_tool(row: ToolCall, status: str, *, output: Any = None, error: str = "") -> None:
        t = timezone.now()
        ToolCall.objects.filter(pk=row.pk, status=ToolCallStatus.STARTED).update(
            status=status, output=output, error=error, finished_at=t)
        row.status, row.output, row.error, row.finished_at = status, output, error, t

    @staticmethod
    def tool_message(row: ToolCall) -> dict[str, Any]:
        failed = row.status == ToolCallStatus.FAILED
        content = f"error: {row.error}" if failed else json.dumps(row.output)
        return {"role": "tool", "tool_call_id": row.call_id, "name": row.tool, "content": content,
                "is_error": failed}

    # --- output -------------------------------------------------------------------------

    def output(self, answer: Answer, value: Any, rounds: int, warnings: list[dict[str, Any]]) -> dict[str, Any]:
        scope = self.scope
        usage: dict[str, Any]
        if self.first_attempt:  # every call of the step was made by this execution
            usage = {"input_tokens": scope.input_tokens, "output_tokens": scope.output_tokens,
                     "cost": scope.cost_usd, "calls": scope.calls}
        else:  # earlier attempts' calls count too (their rounds were paid for once, then); a fork's
            # answers copied from its source run were not paid for here (output.replay counts them)
            usage = LLMCall.objects.filter(step_id=self.step_id, replayed_from__isnull=True).aggregate(
                input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"), cost=Sum("cost_usd"),
                calls=Count("id"))
        tool_calls = ([row.as_output() for row in ToolCall.objects.filter(step_id=self.step_id)]
                      if self.tools or not self.first_attempt else [])
        out: dict[str, Any] = {"json": value} if self.json else {"text": answer.result.text}
        out.update({
            "provider": answer.provider, "model": answer.model,
            "usage": {"input_tokens": usage["input_tokens"] or 0, "output_tokens": usage["output_tokens"] or 0,
                      "cost_usd": float(usage["cost"] or 0), "llm_calls": usage["calls"]},
            "tool_calls": tool_calls, "rounds": rounds, "route": answer.route,
        })
        if warnings:
            out["warnings"] = warnings
        report = self.recorded.report()
        if report is not None:
            out["replay"] = report
        return out
