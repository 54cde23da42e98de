"""OpenTelemetry traces, off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

Spans are built from the rows after the fact, by whichever process wrote them, and their
ids are *derived*, never kept in memory, so spans written by different workers (and by the
process that finished the run) join up without passing any context around:

- the trace id is the UUID of the run's root run (a child run walks ``parent_run`` up);
- a run's span id is a hash of its id; its parent is its parent run's span (child runs);
- a step attempt's span (``step <key>``, written by the executor after the attempt's
  commit) has a span id hashed from (run, step key, attempt) and the run's span as parent;
- the rows an attempt left (LLM calls, tool calls: contributed by their app through
  :func:`register_attempt_spans`) become children of the attempt's span;
- the run's span is written when the run reaches a terminal status (``run_status_changed``).

Waiting steps that no worker executes (approvals, events, timers, child-run steps) have no
attempt span. Export is OTLP/HTTP protobuf in a batch (``BatchSpanProcessor``; the standard
``OTEL_BSP_*`` variables apply), one per process, created after a fork.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.conf import settings

from runs.models import RUN_TERMINAL, Run
from steps import clock
from steps.models import StepExecution, StepStatus

logger = logging.getLogger("stevora.tracing")


@dataclass
class ChildSpan:
    """A span under a step attempt, from a row an app keeps (an LLM call, a tool call)."""

    name: str
    key: str  # unique within the attempt: part of the derived span id
    start: datetime
    end: datetime | None
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    client: bool = False  # SpanKind.CLIENT (a call out of the process) instead of INTERNAL


AttemptSpans = Callable[[StepExecution, int], Iterable[ChildSpan]]
_contributors: dict[str, AttemptSpans] = {}


def register_attempt_spans(name: str, fn: AttemptSpans) -> None:
    """``fn(step_row, attempt)`` yields the child spans of that attempt from the app's rows."""
    _contributors[name] = fn


def enabled() -> bool:
    return bool(settings.STEVORA.get("OTLP_TRACES_ENDPOINT"))


# --- ids ----------------------------------------------------------------------------------


def span_id(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def run_span_id(run_id: Any) -> int:
    return span_id("run", run_id)


def attempt_span_id(run_id: Any, step_key: str, attempt: int) -> int:
    return span_id("step", run_id, step_key, attempt)


@lru_cache(maxsize=4096)
def trace_id(run_id: Any) -> int:
    """The root run's UUID as a 128-bit trace id (a run's ancestry never changes)."""
    current = str(run_id)
    for _ in range(100):
        parent = Run.objects.filter(pk=current).values_list("parent_run_id", flat=True).first()
        if parent is None:
            break
        current = str(parent)
    return int(current.replace("-", ""), 16)


# --- export -------------------------------------------------------------------------------

_lock = threading.Lock()
_processor: dict[int, Any] = {}


def _batch() -> Any:
    """This process's batch processor (a forked worker makes its own)."""
    pid = os.getpid()
    with _lock:
        processor = _processor.get(pid)
        if processor is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.STEVORA["OTLP_TRACES_ENDPOINT"]))
            _processor.clear()
            _processor[pid] = processor
            atexit.register(processor.shutdown)
        return processor


def flush() -> None:
    processor = _processor.get(os.getpid())
    if processor is not None:
        processor.force_flush()


def _nanos(moment: datetime | None) -> int:
    return int((moment or clock.now()).timestamp() * 1e9)


def _emit(name: str, trace: int, span: int, parent: int | None, start: datetime | None, end: datetime | None,
          attributes: dict[str, Any], error: str = "", client: bool = False) -> None:
    from opentelemetry import trace as api
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    flags = api.TraceFlags(api.TraceFlags.SAMPLED)
    context = api.SpanContext(trace, span, is_remote=False, trace_flags=flags)
    parent_context = api.SpanContext(trace, parent, is_remote=True, trace_flags=flags) if parent else None
    status = api.Status(api.StatusCode.ERROR, error[:500]) if error else api.Status(api.StatusCode.OK)
    clean = {k: v for k, v in attributes.items() if v is not None and v != ""}
    _batch().on_end(ReadableSpan(
        name=name, context=context, parent=parent_context, attributes=clean, status=status,
        kind=api.SpanKind.CLIENT if client else api.SpanKind.INTERNAL, start_time=_nanos(start),
        end_time=max(_nanos(end), _nanos(start)), resource=_resource(),
        instrumentation_scope=InstrumentationScope("stevora"),
    ))


@lru_cache(maxsize=1)
def _resource() -> Any:
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "stevora"})


# --- what the engine calls ------------------------------------------------------------------


def attempt_finished(row: StepExecution) -> None:
    """After a step attempt committed (or gave up): its span and its children's. Never raises."""
    try:
        found = StepExecution.objects.filter(pk=row.pk).values("status", "attempt", "error", "finished_at").first()
        now: dict[str, Any] = dict(found) if found else {}
        same = now.get("attempt") == row.attempt
        status = now.get("status") if same else None
        error = ""
        recorded = now.get("error")
        if same and status in (StepStatus.FAILED, StepStatus.READY) and isinstance(recorded, dict):
            error = f"{recorded.get('type', 'error')}: {recorded.get('message', '')}"
        trace = trace_id(row.run_id)
        attempt_span = attempt_span_id(row.run_id, row.key, row.attempt)
        end = now.get("finished_at") if same and status in (StepStatus.COMPLETED, StepStatus.FAILED) else None
        _emit(f"step {row.key}", trace, attempt_span, run_span_id(row.run_id), row.started_at, end, {
            "stevora.run.id": str(row.run_id), "stevora.workflow": row.run.workflow_name,
            "stevora.step.key": row.key, "stevora.step.name": row.name, "stevora.step.type": row.type,
            "stevora.step.attempt": row.attempt, "stevora.step.status": status or "superseded",
            "stevora.worker": row.lease_owner}, error=error)
        for name, contribute in list(_contributors.items()):
            try:
                for child in contribute(row, row.attempt):
                    _emit(child.name, trace, span_id("child", row.run_id, row.key, row.attempt, name, child.key),
                          attempt_span, child.start, child.end, child.attributes, child.error, child.client)
            except Exception:
                logger.exception("tracing: %s spans of step %s failed", name, row.key)
    except Exception:
        logger.exception("tracing: the span of step %s attempt %s was not written", row.key, row.attempt)


def run_finished(run_id: Any) -> None:
    """A run reached a terminal status: its span (parent: its parent run's span). Never raises."""
    try:
        run = Run.objects.filter(pk=run_id).first()
        if run is None or run.status not in RUN_TERMINAL:
            return
        error = ""
        if run.status != "completed":
            detail = run.error.get("message", "") if isinstance(run.error, dict) else ""
            error = f"{run.status}: {detail}".strip()
        _emit(f"run {run.workflow_name}", trace_id(run.pk), run_span_id(run.pk),
              run_span_id(run.parent_run_id) if run.parent_run_id else None, run.created_at, run.finished_at, {
                  "stevora.run.id": str(run.pk), "stevora.workflow": run.workflow_name,
                  "stevora.workflow.version": run.workflow.version, "stevora.run.status": run.status,
                  "stevora.parent_run.id": str(run.parent_run_id) if run.parent_run_id else None,
                  "stevora.run.cost_usd": float(run.cost_usd),
                  "gen_ai.usage.input_tokens": run.input_tokens, "gen_ai.usage.output_tokens": run.output_tokens,
              }, error=error)
    except Exception:
        logger.exception("tracing: the span of run %s was not written", run_id)


def on_run_status_changed(sender: Any, run_id: Any, status: str, **_: Any) -> None:
    if enabled() and status in RUN_TERMINAL:
        run_finished(run_id)
