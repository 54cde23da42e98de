"""A real HTTP server on 127.0.0.1 speaking the OpenAI Chat Completions and Anthropic
Messages wire formats, scripted per test.

Each provider in a test gets its own path prefix (``server.url("primary")`` ->
``http://127.0.0.1:PORT/primary``); the request path picks the format
(``/v1/chat/completions`` or ``/v1/messages``). A prefix's script is a queue of
actions, one per request; when it runs dry the prefix's default answers::

    {"text": "hi", "usage": [12, 3]}             an answer (usage: input, output tokens)
    {"json": {...}}                                an answer whose text is that JSON
    {"tool_calls": [{"name", "arguments"}]}        the model asks for tools
    {"status": 500}  {"status": 429, "headers": {"Retry-After": "0.3"}}
    {"status": 401, "echo_auth": True}             error body quoting the key it received
    {"hang": 5}                                    answer only after 5 s (or release())
    {"raw": "{not json", "status": 200}            a malformed body

A request with ``"stream": true`` gets the same answer as the vendor streams it
(``openai_events`` / ``anthropic_events``); ``cut_after``, ``malformed_at``, ``hang_at``
and ``chunk_delay`` in the action break or slow the stream (see ``Handler._stream``).

Worker subprocesses reach it through the provider's ``base_url``; counts and requests
are kept here, in the test process.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class LLMServer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scripts: dict[str, deque[dict[str, Any]]] = {}
        self.defaults: dict[str, dict[str, Any]] = {}
        self.received: dict[str, list[dict[str, Any]]] = {}
        self.server_seconds = 0.0
        self.events_sent = 0
        self.released = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One buffered write per response and TCP_NODELAY: otherwise headers and body go out as
            # two small segments and Nagle + delayed ACK add ~40 ms to every keep-alive request.
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                t0 = time.perf_counter()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"unparsable": raw.decode(errors="replace")}
                parts = self.path.strip("/").split("/", 1)
                prefix, rest = parts[0], "/" + (parts[1] if len(parts) > 1 else "")
                fmt = "anthropic" if rest.endswith("/v1/messages") else "openai"
                action = server._next(prefix, {"path": self.path, "headers": dict(self.headers), "body": body,
                                                "received_at": time.time()})
                hang = action.get("hang")
                if hang:
                    server.released.wait(float(hang))
                status, headers, payload = server._respond(fmt, action, body, dict(self.headers))
                if status == 200 and isinstance(body, dict) and body.get("stream") and "raw" not in action:
                    self._stream(fmt, action, body, payload, headers)
                    with server.lock:
                        server.server_seconds += time.perf_counter() - t0
                    return
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout) before we answered
                with server.lock:
                    server.server_seconds += time.perf_counter() - t0 - (float(hang) if hang else 0.0)

            def _stream(self, fmt: str, action: dict[str, Any], body: dict[str, Any], whole: dict[str, Any],
                        headers: dict[str, str]) -> None:
                """The answer ``whole`` as the vendor streams it (chunked Server-Sent Events).
                ``cut_after: N`` closes the connection after N events (no last chunk);
                ``malformed_at: N`` sends a chunk that is not JSON as event N;
                ``hang_at: N`` waits (up to ``hang`` s, or release()) before event N;
                ``chunk_delay``: seconds between events."""
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                events = (anthropic_events(whole) if fmt == "anthropic"
                          else openai_events(whole, usage=include_usage))
                cut = action.get("cut_after")
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                    self.send_header("Cache-Control", "no-cache")
                    self.send_header("Transfer-Encoding", "chunked")
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    for n, event in enumerate(events):
                        if cut is not None and n >= int(cut):
                            self.wfile.flush()
                            self.close_connection = True
                            self.connection.shutdown(2)
                            return
                        if action.get("hang_at") is not None and n == int(action["hang_at"]):
                            self.wfile.flush()
                            server.released.wait(float(action.get("stream_hang", 60)))
                        if action.get("malformed_at") is not None and n == int(action["malformed_at"]):
                            event = "data: {not json\n\n"
                        data = event.encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                        with server.lock:
                            server.events_sent += 1
                        if action.get("chunk_delay"):
                            time.sleep(float(action["chunk_delay"]))
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="llm-server", daemon=True)

    # --- control ----------------------------------------------------------------------

    def start(self) -> LLMServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}/{prefix}"

    def script(self, prefix: str, *actions: dict[str, Any], default: dict[str, Any] | None = None) -> None:
        with self.lock:
            self.scripts.setdefault(prefix, deque()).extend(actions)
            if default is not None:
                self.defaults[prefix] = default

    def reset(self) -> None:
        with self.lock:
            self.scripts.clear()
            self.defaults.clear()
            self.received.clear()
            self.server_seconds = 0.0
            self.events_sent = 0
        self.released.clear()

    def release(self) -> None:
        """Let every hanging request answer now."""
        self.released.set()

    def count(self, prefix: str) -> int:
        with self.lock:
            return len(self.received.get(prefix, []))

    def requests(self, prefix: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.received.get(prefix, []))

    # --- answering --------------------------------------------------------------------

    def _next(self, prefix: str, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.received.setdefault(prefix, []).append(request)
            queue = self.scripts.get(prefix)
            if queue:
                return queue.popleft()
            return self.defaults.get(prefix, {"text": "default answer"})

    def _respond(self, fmt: str, action: dict[str, Any], body: dict[str, Any],
                 headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        status = int(action.get("status", 200))
        extra_headers = dict(action.get("headers") or {})
        if "raw" in action:
            return status, extra_headers, str(action["raw"]).encode()
        if status >= 400:
            message = action.get("message") or f"scripted {status}"
            if action.get("echo_auth"):
                message += " key received: " + (headers.get("Authorization") or headers.get("x-api-key") or "")
            if fmt == "anthropic":
                return status, extra_headers, {"type": "error", "error": {"type": action.get("type", "api_error"),
                                                                            "message": message}}
            return status, extra_headers, {"error": {"message": message, "type": action.get("type", "server_error"),
                                                     "param": None, "code": None}}
        usage = action.get("usage") or (10, 5)
        text = json.dumps(action["json"]) if "json" in action else action.get("text", "")
        calls = action.get("tool_calls") or []
        model = body.get("model", "unknown") if isinstance(body, dict) else "unknown"
        if fmt == "anthropic":
            content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
            for i, c in enumerate(calls):
                content.append({"type": "tool_use", "id": c.get("id", f"toolu_{i}"), "name": c["name"],
                                "input": c.get("arguments", {})})
            return 200, extra_headers, {
                "id": "msg_test", "type": "message", "role": "assistant", "model": model, "content": content,
                "stop_reason": "tool_use" if calls else "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
            }
        reply: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            reply["tool_calls"] = [{
                "id": c.get("id", f"call_{i}"), "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"] if isinstance(c.get("arguments"), str)
                             else json.dumps(c.get("arguments", {}))}} for i, c in enumerate(calls)]
        return 200, extra_headers, {
            "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": reply, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": usage[0] + usage[1]},
        }


def _pieces(text: str, size: int = 2) -> list[str]:
    """Text in pieces of ``size`` words (spaces kept), as a model writes it."""
    words = text.split(" ")
    out = []
    for i in range(0, len(words), size):
        piece = " ".join(words[i:i + size])
        out.append(piece + (" " if i + size < len(words) else ""))
    return [p for p in out if p]


def _sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return head + "data: " + (data if isinstance(data, str) else json.dumps(data)) + "\n\n"


def openai_events(whole: dict[str, Any], *, usage: bool) -> list[str]:
    """OpenAI Chat Completions ``stream: true``: chat.completion.chunk objects, tool calls as
    deltas by index, a usage chunk with empty choices (``stream_options.include_usage``), [DONE]."""
    head = {"id": whole["id"], "object": "chat.completion.chunk", "created": whole["created"],
            "model": whole["model"], "system_fingerprint": "fp_test"}
    choice = whole["choices"][0]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        body = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage:
            body["usage"] = None
        return _sse(body)

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": piece}) for piece in _pieces(message.get("content") or "")]
    for i, tc in enumerate(message.get("tool_calls") or []):
        events.append(chunk({"tool_calls": [{"index": i, "id": tc["id"], "type": "function",
                                             "function": {"name": tc["function"]["name"], "arguments": ""}}]}))
        args = tc["function"]["arguments"]
        half = len(args) // 2
        for part in (args[:half], args[half:]):
            if part:
                events.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]}))
    events.append(chunk({}, choice["finish_reason"]))
    if usage:
        events.append(_sse({**head, "choices": [], "usage": whole["usage"]}))
    events.append(_sse("[DONE]"))
    return events


def anthropic_events(whole: dict[str, Any]) -> list[str]:
    """Anthropic Messages ``stream: true``: message_start, per block content_block_start /
    content_block_delta (text_delta, input_json_delta) / content_block_stop, message_delta with
    stop_reason and usage.output_tokens, message_stop; a ping after the first block starts."""
    start = {**whole, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": whole["usage"]["input_tokens"], "output_tokens": 1}}
    events = [_sse({"type": "message_start", "message": start}, "message_start")]
    for index, block in enumerate(whole["content"]):
        if block["type"] == "text":
            events.append(_sse({"type": "content_block_start", "index": index,
                                "content_block": {"type": "text", "text": ""}}, "content_block_start"))
            if index == 0:
                events.append(_sse({"type": "ping"}, "ping"))
            for piece in _pieces(block["text"]):
                events.append(_sse({"type": "content_block_delta", "index": index,
                                    "delta": {"type": "text_delta", "text": piece}}, "content_block_delta"))
        else:
            events.append(_sse({"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}, "content_block_start"))
            raw = json.dumps(block["input"])
            half = len(raw) // 2
            for part in (raw[:half], raw[half:]):
                events.append(_sse({"type": "content_block_delta", "index": index,
                                    "delta": {"type": "input_json_delta", "partial_json": part}},
                                   "content_block_delta"))
        events.append(_sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
    events.append(_sse({"type": "message_delta", "delta": {"stop_reason": whole["stop_reason"],
                                                            "stop_sequence": None},
                        "usage": {"output_tokens": whole["usage"]["output_tokens"]}}, "message_delta"))
    events.append(_sse({"type": "message_stop"}, "message_stop"))
    return events


@pytest.fixture(scope="session", name="llm_server_session")
def llm_server_session_fixture() -> Iterator[LLMServer]:
    server = LLMServer().start()
    yield server
    server.stop()


@pytest.fixture(name="llm_server")
def llm_server_fixture(llm_server_session: LLMServer) -> Iterator[LLMServer]:
    """The scripted OpenAI/Anthropic server, emptied for each test.

    Test modules import ``llm_server_fixture`` and ``llm_server_session_fixture``.
    """
    llm_server_session.reset()
    yield llm_server_session
    llm_server_session.release()


def make_provider(server: LLMServer, name: str, kind: str = "openai_compatible", **fields: Any) -> Any:
    """A provider row pointing at ``server`` under prefix ``name``, with test-sized timeouts."""
    from providers.models import Provider

    values: dict[str, Any] = dict(model=f"{name}-model", base_url=server.url(name), timeout_seconds=2.0,
                                  connect_timeout_seconds=1.0, max_retries=2, backoff_seconds=0.01,
                                  max_backoff_seconds=0.05, breaker_threshold=50, breaker_cooldown_seconds=60)
    values.update(fields)
    return Provider.objects.create(name=name, kind=kind, **values)


def llm_workflow(name: str, **step: Any) -> dict[str, Any]:
    """A one-step workflow around an llm step (``messages`` defaults to one user turn)."""
    step.setdefault("messages", [{"role": "user", "content": "{{ input.question | default('Say hi') }}"}])
    return {"name": name, "steps": [{"name": "ask", "type": "llm", **step}]}


def calls_of(run: Any) -> list[Any]:
    from providers.models import LLMCall

    return list(LLMCall.objects.filter(run_id=run.pk).order_by("id"))


def output_of(obj: Any) -> dict[str, Any]:
    """A run's or step's output (a dict for llm steps)."""
    assert isinstance(obj.output, dict), f"no output: {obj.output!r} (error: {obj.error!r})"
    return obj.output


def error_of(obj: Any) -> dict[str, Any]:
    assert isinstance(obj.error, dict), f"no error: {obj.error!r}"
    return obj.error
