"""What-if replays: a fork with ``replay: recorded`` answers from its source run's record.

In each ``llm`` step of such a fork, a model turn whose request digest (messages, system
prompt, tools, format) equals the digest the source run's same step recorded for that
round gets the source's answer — no request is sent, nothing is charged — and a tool call
the replayed model asked for, with the same name and arguments as the source's, gets the
source's result — the handler is not entered. Both are written as this step's own rows,
``replayed_from`` pointing at the source row, so a crash in the fork resumes from them like
from any other checkpoint. The first turn or tool call that differs (the input, the prompt
or an earlier result changed, or the source never got that far) goes live, and so does
everything after it in the step: a live answer is never followed by a recorded one.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from runs.models import Run, record
from steps.models import StepExecution

from .chain import Answer
from .models import LLMCall, LLMCallStatus, ToolCall, ToolCallStatus
from .wire import ChatResult

RECORDED = "recorded"


class Recorded:
    """The source run's record of one step of a replaying fork (or nothing: all live)."""

    def __init__(self, run: Run, step: StepExecution) -> None:
        self.run_id = run.pk
        self.step_id = step.pk
        self.step_key = step.key
        self.source_step_id: int | None = None
        if run.replay == RECORDED and run.forked_from_id:
            self.source_step_id = (StepExecution.objects.filter(run_id=run.forked_from_id, key=step.key)
                                   .values_list("pk", flat=True).first())
        self.enabled = run.replay == RECORDED
        self.live = self.source_step_id is None
        self.went_live: dict[str, Any] | None = None
        if self.enabled and self.live:
            self.went_live = {"round": 1, "reason": "the source run has no step " + step.key}

    def go_live(self, round_number: int, reason: str) -> None:
        if self.live:
            return
        self.live = True
        self.went_live = {"round": round_number, "reason": reason}
        record(self.run_id, "replay_went_live", step_key=self.step_key,
               message=f"round {round_number}: {reason}; this and everything after it run live",
               data={"round": round_number, "reason": reason})

    def saw_own(self, round_number: int, replayed: bool) -> None:
        """A checkpoint of this step (a re-execution): one that was live keeps the rest live."""
        if self.enabled and not replayed and not self.live:
            self.live = True
            self.went_live = {"round": round_number, "reason": "went live in an earlier attempt of this step"}

    # --- model turns ------------------------------------------------------------------------

    def answer(self, round_number: int, digest: str, step_attempt: int) -> Answer | None:
        if self.live or self.source_step_id is None:
            return None
        source = LLMCall.objects.filter(step_id=self.source_step_id, round=round_number,
                                        status=LLMCallStatus.SUCCEEDED).first()
        if source is None or source.result is None:
            self.go_live(round_number, "the source run has no answer for this round")
            return None
        if source.request_digest != digest:
            self.go_live(round_number, "the request differs from the source run's")
            return None
        now = timezone.now()
        try:
            with transaction.atomic():
                LLMCall.objects.create(
                    step_id=self.step_id, run_id=self.run_id, step_attempt=step_attempt, round=round_number,
                    try_number=1, provider_id=source.provider_id, provider_name=source.provider_name,
                    kind=source.kind, model=source.model, status=LLMCallStatus.SUCCEEDED, request=source.request,
                    response=source.response, result=source.result, request_digest=digest, replayed_from=source,
                    latency_ms=0.0, finished_at=now)
        except IntegrityError:
            pass  # a concurrent attempt of this step recorded the round first: the same answer
        result = ChatResult.from_json(source.result)
        return Answer(result, source.provider_name, result.model or source.model,
                      [{"provider": source.provider_name, "outcome": "replayed from the source run"}], replayed=True)

    # --- tool calls -------------------------------------------------------------------------

    def tool(self, round_number: int, call_id: str, name: str, arguments: Any, *, key: str, effects: str,
             handler: str, step_attempt: int) -> ToolCall | None:
        if self.live or self.source_step_id is None:
            return None
        source = ToolCall.objects.filter(step_id=self.source_step_id, round=round_number, call_id=call_id).first()
        if source is None or source.status not in (ToolCallStatus.COMPLETED, ToolCallStatus.FAILED):
            self.go_live(round_number, f"the source run has no result for tool call {call_id}")
            return None
        if source.tool != name or source.arguments != arguments:
            self.go_live(round_number, f"tool call {call_id} differs from the source run's")
            return None
        try:
            with transaction.atomic():
                return ToolCall.objects.create(
                    step_id=self.step_id, round=round_number, call_id=call_id, tool=name, handler=handler,
                    arguments=arguments, status=source.status, output=source.output, error=source.error,
                    step_attempt=step_attempt, executions=0, idempotency_key=key, effects=effects,
                    replayed_from=source, finished_at=timezone.now())
        except IntegrityError:
            return ToolCall.objects.get(step_id=self.step_id, round=round_number, call_id=call_id)

    # --- the step's report --------------------------------------------------------------------

    def report(self) -> dict[str, Any] | None:
        """How much of this step was replayed, and what that saved (None: not a replaying fork)."""
        if not self.enabled:
            return None
        replayed = Q(replayed_from__isnull=False)
        turns = LLMCall.objects.filter(step_id=self.step_id, status=LLMCallStatus.SUCCEEDED).aggregate(
            replayed=Count("id", filter=replayed), live=Count("id", filter=~replayed),
            input_tokens=Sum("replayed_from__input_tokens"), output_tokens=Sum("replayed_from__output_tokens"),
            cost=Sum("replayed_from__cost_usd"))
        tools = ToolCall.objects.filter(step_id=self.step_id).aggregate(
            replayed=Count("id", filter=replayed), live=Count("id", filter=~replayed))
        return {
            "model_turns": {"replayed": turns["replayed"], "live": turns["live"]},
            "tool_calls": {"replayed": tools["replayed"], "live": tools["live"]},
            "saved": {"input_tokens": turns["input_tokens"] or 0, "output_tokens": turns["output_tokens"] or 0,
                      "cost_usd": float(turns["cost"] or Decimal(0))},
            "went_live": self.went_live,
        }
