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
                action = server._next(prefix, {"path": self.path, "headers": dict(self.headers), "body": body})
                hang = action.get("hang")
                if hang:
                    server.released.wait(float(hang))
                status, headers, payload = server._respond(fmt, action, body, dict(self.headers))
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
