"""With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, a real engine exports one trace per run tree over
OTLP/HTTP to a receiver on 127.0.0.1 that decodes it with opentelemetry-proto: the run's span,
a span per step attempt under it, LLM and tool call spans (GenAI conventions) under their
attempt, and a child run's spans in its parent's trace under the parent run's span."""

from __future__ import annotations

import gzip
import http.server
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from runs.engine import tracing
from runs.engine.tracing import attempt_span_id, run_span_id
from runs.models import Run
from runs.services import start_run
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    make_provider,
)
from tests.support.workers import wait_until
from tests.test_llm_agent_loop import TOOLS


class Receiver(http.server.ThreadingHTTPServer):
    spans: list[Span]
    paths: list[str]


class Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        self.server.paths.append(self.path)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.server.spans.extend(scope_spans.spans)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", 0), Handler)
    server.spans, server.paths = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def attrs(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


def sid(value: int) -> bytes:
    return value.to_bytes(8, "big")


def test_a_run_tree_is_one_trace_of_runs_attempts_llm_and_tool_calls(
        fresh_engine: Any, workflow: Any, llm_server: Any, receiver: Receiver, ledger: Any) -> None:
    make_provider(llm_server, "agent", kind="openai", max_retries=0)
    llm_server.script("agent", {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"query": "x"}}],
                                "usage": (30, 7)},
                      {"text": "done", "usage": (40, 9)})
    workflow({"name": "t-child", "steps": [{"name": "v", "type": "task", "handler": "test.value",
                                            "config": {"value": 1}}]})
    workflow({"name": "t-parent", "steps": [
        {"name": "prep", "type": "task", "handler": "test.value", "config": {"value": 2}},
        {"name": "sub", "type": "workflow", "workflow": "t-child"},
        {"name": "ask", "type": "llm", "provider": "agent", "tools": TOOLS,
         "messages": [{"role": "user", "content": "look x up"}]},
    ]})
    fresh_engine(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.server_address[1]}",
                 OTEL_BSP_SCHEDULE_DELAY="100")
    parent = wait_for_run(start_run("t-parent", {"ledger": str(ledger)}).run.pk)
    assert parent.status == "completed", parent.error
    child = Run.objects.get(parent_run=parent)

    def by_name() -> dict[str, Span] | None:
        spans = {s.name: s for s in list(receiver.spans)}
        wanted = {"run t-parent", "run t-child", "step prep", "step v", "step ask", "chat agent-model",
                  "execute_tool lookup"}
        return spans if wanted <= set(spans) else None

    spans = wait_until(by_name, timeout=15, message="the run tree's spans at the receiver")
    assert set(receiver.paths) == {"/v1/traces"}
    trace = uuid.UUID(str(parent.pk)).bytes
    assert {s.trace_id for s in receiver.spans} == {trace}, "one trace: the root run's id"

    root = spans["run t-parent"]
    assert root.span_id == sid(run_span_id(parent.pk)) and root.parent_span_id == b""
    assert attrs(root)["stevora.run.status"] == "completed"
    assert root.status.code == root.status.STATUS_CODE_OK
    child_run = spans["run t-child"]
    assert child_run.span_id == sid(run_span_id(child.pk))
    assert child_run.parent_span_id == root.span_id
    assert attrs(child_run)["stevora.parent_run.id"] == str(parent.pk)

    prep = spans["step prep"]
    assert prep.parent_span_id == root.span_id
    assert prep.span_id == sid(attempt_span_id(parent.pk, "prep", 1))
    assert attrs(prep)["stevora.step.attempt"] == 1 and attrs(prep)["stevora.step.status"] == "completed"
    assert spans["step v"].parent_span_id == child_run.span_id

    ask = spans["step ask"]
    assert ask.parent_span_id == root.span_id
    chats = [s for s in receiver.spans if s.name == "chat agent-model"]
    assert len(chats) == 2 and {c.parent_span_id for c in chats} == {ask.span_id}
    first = attrs(sorted(chats, key=lambda s: s.start_time_unix_nano)[0])
    assert first["gen_ai.system"] == "openai" and first["gen_ai.request.model"] == "agent-model"
    assert (first["gen_ai.usage.input_tokens"], first["gen_ai.usage.output_tokens"]) == (30, 7)
    assert first["gen_ai.operation.name"] == "chat" and first["stevora.llm.provider"] == "agent"
    assert chats[0].kind == Span.SPAN_KIND_CLIENT
    tool = spans["execute_tool lookup"]
    assert tool.parent_span_id == ask.span_id
    assert attrs(tool)["gen_ai.tool.name"] == "lookup" and attrs(tool)["gen_ai.tool.call.id"] == "c1"
    for span in receiver.spans:
        assert span.end_time_unix_nano >= span.start_time_unix_nano > 0


@pytest.mark.skipif(bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")), reason="an endpoint is set here")
def test_tracing_is_off_unless_an_endpoint_is_set() -> None:
    assert settings.STEVORA["OTLP_TRACES_ENDPOINT"] == ""
    assert not tracing.enabled()
