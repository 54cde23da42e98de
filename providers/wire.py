"""Wire formats of the provider kinds, behind a small registry of names.

Each client turns a neutral :class:`ChatRequest` into the vendor's HTTP request
(``build``) and the vendor's response into a neutral :class:`ChatResult` (``parse``),
raising :class:`ProviderError` that says whether the failure is transient (retry,
then the next provider) or permanent (the next provider at once).

Neutral messages (what the agent loop keeps)::

    {"role": "user" | "assistant" | "system", "content": "..."}
    {"role": "assistant", "content": "...", "tool_calls": [{"id", "name", "arguments": {...}}]}
    {"role": "tool", "tool_call_id": "...", "name": "...", "content": "...", "is_error": false}
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Provider

REDACTED = "[redacted]"
SECRET_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})
TRANSIENT_STATUSES = frozenset({408, 409, 429})


class ProviderError(Exception):
    """A provider did not answer. ``permanent`` failures are not retried on the same provider."""

    def __init__(self, message: str, *, permanent: bool, status: int | None = None,
                 retry_after: float | None = None, body: Any = None, counts_for_breaker: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status
        self.retry_after = retry_after
        self.body = body
        self.counts_for_breaker = counts_for_breaker
        # Set when this failure opened the provider's circuit: no more retries on it.
        self.stop_retrying = False

    @property
    def kind(self) -> str:
        return "permanent" if self.permanent else "transient"


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]
    system: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)  # {"name", "description", "parameters"}
    temperature: float | None = None
    max_tokens: int | None = None
    json: bool = False
    schema: dict[str, Any] | None = None

    def digest(self) -> str:
        """What was asked, whoever answers it: replays check it against the recorded round."""
        canonical = json.dumps(
            {"messages": [{k: v for k, v in m.items() if k != "raw_arguments"} for m in self.messages],
             "system": self.system, "tools": self.tools, "json": self.json, "schema": self.schema},
            sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class ChatResult:
    text: str
    tool_calls: list[dict[str, Any]]
    input_tokens: int
    output_tokens: int
    stop_reason: str = ""
    model: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChatResult:
        return cls(text=data.get("text") or "", tool_calls=data.get("tool_calls") or [],
                   input_tokens=int(data.get("input_tokens") or 0), output_tokens=int(data.get("output_tokens") or 0),
                   stop_reason=data.get("stop_reason") or "", model=data.get("model") or "")


@dataclass
class HttpRequest:
    url: str
    headers: dict[str, str]
    body: dict[str, Any]

    def redacted(self) -> dict[str, Any]:
        headers = {k: (REDACTED if k.lower() in SECRET_HEADERS else v) for k, v in self.headers.items()}
        return {"url": self.url, "headers": headers, "body": self.body}


def json_instruction(req: ChatRequest) -> str:
    text = "Answer with one JSON value only, no prose and no code fences."
    if req.schema:
        text += " It must validate against this JSON Schema: " + json.dumps(req.schema, sort_keys=True)
    return text


def system_with_json(req: ChatRequest) -> str | None:
    if not req.json:
        return req.system
    return f"{req.system}\n\n{json_instruction(req)}" if req.system else json_instruction(req)


def parse_retry_after(headers: Any) -> float | None:
    """``retry-after-ms`` (OpenAI), ``retry-after`` in seconds or as an HTTP date."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def error_message(body: Any, fallback: str) -> str:
    """OpenAI ``{"error": {"message", "type", "code"}}``; Anthropic ``{"type": "error", "error": {...}}``."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        kind = err.get("type") or err.get("code") or ""
        message = err.get("message") or ""
        return f"{kind}: {message}".strip(": ") or fallback
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return fallback


def classify_status(status: int, headers: Any, body: Any) -> ProviderError:
    message = f"HTTP {status}: {error_message(body, 'no error message')}"
    if status in TRANSIENT_STATUSES or status >= 500:
        return ProviderError(message, permanent=False, status=status, retry_after=parse_retry_after(headers),
                             body=body)
    # 400/422 describe our request, not the provider's health: they do not trip the breaker.
    return ProviderError(message, permanent=True, status=status, body=body,
                         counts_for_breaker=status in (401, 403, 404))


def _arguments(raw: Any) -> tuple[dict[str, Any] | None, str, str | None]:
    """Tool-call arguments: OpenAI sends a JSON string, Anthropic an object."""
    if isinstance(raw, dict):
        return raw, json.dumps(raw), None
    text = raw if isinstance(raw, str) else json.dumps(raw)
    try:
        parsed = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        return None, text, f"arguments are not valid JSON: {exc.msg}"
    if not isinstance(parsed, dict):
        return None, text, "arguments must be a JSON object"
    return parsed, text, None


def _malformed(what: str, body: Any = None) -> ProviderError:
    return ProviderError(f"malformed response: {what}", permanent=False, body=body)


def join_url(root: str, path: str) -> str:
    """``base_url`` may be given with or without its ``/v1`` (Ollama's docs say ``.../v1``)."""
    if root.endswith("/v1") and path.startswith("/v1/"):
        return root + path[3:]
    return root + path


class Client:
    kind = ""

    def build(self, provider: Provider, model: str, req: ChatRequest, key: str | None) -> HttpRequest:
        raise NotImplementedError

    def parse(self, provider: Provider, body: Any) -> ChatResult:
        raise NotImplementedError

    def streamed(self, http: HttpRequest) -> HttpRequest:
        """The same request, asking for Server-Sent Events."""
        raise NotImplementedError

    def assembler(self) -> StreamAssembler:
        raise NotImplementedError


class OpenAIClient(Client):
    """OpenAI Chat Completions: ``POST {base}/v1/chat/completions`` with ``Authorization: Bearer``."""

    kind = "openai"
    path = "/v1/chat/completions"

    def build(self, provider: Provider, model: str, req: ChatRequest, key: str | None) -> HttpRequest:
        messages: list[dict[str, Any]] = []
        system = system_with_json(req)
        if system:
            messages.append({"role": "system", "content": system})
        for m in req.messages:
            if m["role"] == "tool":
                messages.append({"role": "tool", "tool_call_id": m["tool_call_id"], "content": m["content"]})
            elif m["role"] == "assistant" and m.get("tool_calls"):
                messages.append({"role": "assistant", "content": m.get("content") or None, "tool_calls": [
                    {"id": tc["id"], "type": "function",
                     "function": {"name": tc["name"], "arguments": tc.get("raw_arguments")
                                  or json.dumps(tc.get("arguments") or {})}}
                    for tc in m["tool_calls"]]})
            else:
                messages.append({"role": m["role"], "content": m["content"]})
        body: dict[str, Any] = {"model": model, "messages": messages}
        if req.temperature is not None:
            body["temperature"] = req.temperature
        if req.max_tokens is not None:
            # OpenAI deprecated max_tokens for max_completion_tokens; compatible servers know max_tokens.
            default_field = "max_completion_tokens" if provider.kind == "openai" else "max_tokens"
            body[provider.options.get("max_tokens_field", default_field)] = req.max_tokens
        if req.tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t["name"], "description": t.get("description", ""), "parameters": t["parameters"]}}
                for t in req.tools]
        if req.json:
            mode = provider.options.get("json_mode", "json_schema")
            if mode == "json_schema" and req.schema:
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": "output", "schema": req.schema}}
            elif mode in ("json_schema", "json_object"):
                body["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            # Azure OpenAI deployments take the key in ``api-key`` (options.auth_header: api-key).
            if provider.options.get("auth_header", "authorization").lower() == "api-key":
                headers["api-key"] = key
            else:
                headers["Authorization"] = f"Bearer {key}"
        return HttpRequest(join_url(provider.url_root, provider.options.get("path", self.path)), headers, body)

    def streamed(self, http: HttpRequest) -> HttpRequest:
        body = {**http.body, "stream": True, "stream_options": {"include_usage": True}}
        return HttpRequest(http.url, {**http.headers, "Accept": "text/event-stream"}, body)

    def assembler(self) -> StreamAssembler:
        return OpenAIStream()

    def parse(self, provider: Provider, body: Any) -> ChatResult:
        try:
            choice = body["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise _malformed("no choices[0].message", body) from None
        tool_calls: list[dict[str, Any]] = []
        for tc in message.get("tool_calls") or []:
            fn = tc.get("function") or {}
            args, raw, problem = _arguments(fn.get("arguments", ""))
            tool_calls.append({"id": tc.get("id") or f"call_{len(tool_calls)}", "name": fn.get("name", ""),
                               "arguments": args, "raw_arguments": raw, "arguments_error": problem})
        usage = body.get("usage") or {}
        return ChatResult(
            # A refusal (structured outputs) comes instead of content; it is the answer to judge.
            text=message.get("content") or message.get("refusal") or "", tool_calls=tool_calls,
            input_tokens=int(usage.get("prompt_tokens") or 0), output_tokens=int(usage.get("completion_tokens") or 0),
            stop_reason=choice.get("finish_reason") or "", model=body.get("model") or "",
        )


class AnthropicClient(Client):
    """Anthropic Messages: ``POST {base}/v1/messages``, ``x-api-key``, ``anthropic-version``."""

    kind = "anthropic"
    path = "/v1/messages"

    def build(self, provider: Provider, model: str, req: ChatRequest, key: str | None) -> HttpRequest:
        systems = [s for s in [system_with_json(req)] if s]
        turns: list[dict[str, Any]] = []

        def add(role: str, blocks: list[dict[str, Any]]) -> None:
            # The Messages API alternates user and assistant turns: merge neighbours.
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"].extend(blocks)
            else:
                turns.append({"role": role, "content": blocks})

        for m in req.messages:
            if m["role"] == "system":
                systems.append(m["content"])
            elif m["role"] == "tool":
                block: dict[str, Any] = {"type": "tool_result", "tool_use_id": m["tool_call_id"],
                                         "content": m["content"]}
                if m.get("is_error"):
                    block["is_error"] = True
                add("user", [block])
            elif m["role"] == "assistant":
                blocks: list[dict[str, Any]] = [{"type": "text", "text": m["content"]}] if m.get("content") else []
                for tc in m.get("tool_calls") or []:
                    blocks.append({"type": "tool_use", "id": tc["id"], "name": tc["name"],
                                   "input": tc.get("arguments") or {}})
                # The Messages API refuses empty content; an empty answer sent back for a retry says so.
                add("assistant", blocks or [{"type": "text", "text": "(empty answer)"}])
            else:
                add("user", [{"type": "text", "text": m["content"]}])
        body: dict[str, Any] = {
            "model": model,
            # Required by the Messages API.
            "max_tokens": req.max_tokens or int(provider.options.get("default_max_tokens", 1024)),
            "messages": turns,
        }
        if systems:
            body["system"] = "\n\n".join(systems)
        if req.temperature is not None:
            body["temperature"] = min(req.temperature, 1.0)  # Anthropic's range is 0..1
        if req.tools:
            body["tools"] = [{"name": t["name"], "description": t.get("description", ""),
                              "input_schema": t["parameters"]} for t in req.tools]
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "anthropic-version": provider.options.get("anthropic_version", "2023-06-01")}
        if key:
            headers["x-api-key"] = key
        return HttpRequest(join_url(provider.url_root, provider.options.get("path", self.path)), headers, body)

    def streamed(self, http: HttpRequest) -> HttpRequest:
        return HttpRequest(http.url, {**http.headers, "Accept": "text/event-stream"}, {**http.body, "stream": True})

    def assembler(self) -> StreamAssembler:
        return AnthropicStream()

    def parse(self, provider: Provider, body: Any) -> ChatResult:
        if not isinstance(body, dict) or not isinstance(body.get("content"), list):
            raise _malformed("no content array", body)
        texts: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        for block in body["content"]:
            if block.get("type") == "text":
                texts.append(block.get("text", ""))
            elif block.get("type") == "tool_use":
                args, raw, problem = _arguments(block.get("input", {}))
                tool_calls.append({"id": block.get("id") or f"toolu_{len(tool_calls)}", "name": block.get("name", ""),
                                   "arguments": args, "raw_arguments": raw, "arguments_error": problem})
        usage = body.get("usage") or {}
        return ChatResult(
            text="".join(texts), tool_calls=tool_calls, input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0), stop_reason=body.get("stop_reason") or "",
            model=body.get("model") or "",
        )


# --- streamed answers ---------------------------------------------------------------------
#
# An assembler reads the vendor's Server-Sent Events and builds the body the same request
# would have got without ``stream`` — so ``parse`` turns both into the same ChatResult, and a
# streamed answer is recorded exactly like a whole one. A stream that ends before the vendor's
# last event, or carries a chunk that is not JSON, is a transient failure: nothing of it is
# recorded as the answer.


class SSEParser:
    """Server-Sent Events, line by line (``event:``, ``data:``; a blank line ends an event)."""

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        if line == "":
            if not self.data and not self.event:
                return None
            out = (self.event or "message", "\n".join(self.data))
            self.event, self.data = "", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


def _chunk(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise _malformed(f"stream chunk is not JSON: {data[:200]!r}") from None
    if not isinstance(value, dict):
        raise _malformed(f"stream chunk is not an object: {data[:200]!r}")
    return value


class StreamAssembler:
    done = False

    def feed(self, event: str, data: str) -> str:
        """Take one event; return the text it adds (for watchers), or ``""``."""
        raise NotImplementedError

    def body(self) -> dict[str, Any]:
        """The non-streamed body this stream adds up to."""
        raise NotImplementedError


class OpenAIStream(StreamAssembler):
    """``data: {chat.completion.chunk}`` … ``data: [DONE]``; tool calls arrive as deltas by
    ``index`` (id and name first, then pieces of the arguments string); with
    ``stream_options.include_usage`` a last chunk with empty ``choices`` carries ``usage``."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.role = "assistant"

    def feed(self, event: str, data: str) -> str:
        if data.strip() == "[DONE]":
            self.done = True
            return ""
        chunk = _chunk(data)
        if isinstance(chunk.get("error"), dict):
            raise ProviderError(f"stream error: {error_message(chunk, 'error in stream')}", permanent=False,
                                body=chunk)
        if not self.head:
            self.head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        added = ""
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            self.role = delta.get("role") or self.role
            if delta.get("content"):
                self.content.append(delta["content"])
                added += delta["content"]
            if delta.get("refusal"):
                self.refusal.append(delta["refusal"])
                added += delta["refusal"]
            for tc in delta.get("tool_calls") or []:
                slot = self.calls.setdefault(int(tc.get("index", 0)),
                                             {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
                if tc.get("id"):
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    slot["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    slot["function"]["arguments"] += fn["arguments"]
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return added

    def body(self) -> dict[str, Any]:
        if not self.done:
            raise _malformed("the stream ended before data: [DONE]")
        message: dict[str, Any] = {"role": self.role, "content": "".join(self.content) or None}
        if self.refusal:
            message["refusal"] = "".join(self.refusal)
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        body = {**self.head, "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}]}
        if self.usage is not None:
            body["usage"] = self.usage
        return body


class AnthropicStream(StreamAssembler):
    """``message_start`` (the message, ``usage.input_tokens``), per content block
    ``content_block_start`` / ``content_block_delta`` (``text_delta``, ``input_json_delta``) /
    ``content_block_stop``, ``message_delta`` (``stop_reason``, cumulative ``usage.output_tokens``),
    ``message_stop``; ``ping`` is ignored and ``error`` fails the attempt."""

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self.blocks: dict[int, dict[str, Any]] = {}
        self.partial_json: dict[int, list[str]] = {}

    def feed(self, event: str, data: str) -> str:
        chunk = _chunk(data)
        kind = chunk.get("type") or event
        if kind == "ping":
            return ""
        if kind == "error":
            err = chunk.get("error") or {}
            raise ProviderError(f"stream error: {error_message(chunk, 'error in stream')}",
                                permanent=False, body=chunk,
                                counts_for_breaker=err.get("type") != "invalid_request_error")
        if kind == "message_start":
            self.message = dict(chunk.get("message") or {})
            self.message["content"] = []
            return ""
        if self.message is None:
            raise _malformed(f"stream event {kind!r} before message_start")
        index = int(chunk.get("index", 0))
        if kind == "content_block_start":
            self.blocks[index] = dict(chunk.get("content_block") or {})
            if self.blocks[index].get("type") == "tool_use":
                self.partial_json[index] = []
            return ""
        if kind == "content_block_delta":
            block = self.blocks.get(index)
            delta = chunk.get("delta") or {}
            if block is None:
                raise _malformed(f"content_block_delta for block {index} before its content_block_start")
            if delta.get("type") == "text_delta":
                block["text"] = (block.get("text") or "") + delta.get("text", "")
                return str(delta.get("text", ""))
            if delta.get("type") == "input_json_delta":
                self.partial_json.setdefault(index, []).append(delta.get("partial_json", ""))
            return ""
        if kind == "content_block_stop":
            block = self.blocks.get(index)
            if block is not None and index in self.partial_json:
                raw = "".join(self.partial_json.pop(index))
                try:
                    block["input"] = json.loads(raw) if raw.strip() else {}
                except ValueError:
                    block["input"] = raw  # parse() reports it as arguments that are not JSON
            return ""
        if kind == "message_delta":
            delta = chunk.get("delta") or {}
            for key in ("stop_reason", "stop_sequence"):
                if key in delta:
                    self.message[key] = delta[key]
            usage = dict(self.message.get("usage") or {})
            usage.update({k: v for k, v in (chunk.get("usage") or {}).items() if v is not None})
            self.message["usage"] = usage
            return ""
        if kind == "message_stop":
            self.done = True
        return ""

    def body(self) -> dict[str, Any]:
        if not self.done or self.message is None:
            raise _malformed("the stream ended before message_stop")
        return {**self.message, "content": [self.blocks[i] for i in sorted(self.blocks)]}


CLIENTS: dict[str, Client] = {
    "openai": OpenAIClient(),
    "openai_compatible": OpenAIClient(),
    "anthropic": AnthropicClient(),
}


def client_for(kind: str) -> Client:
    try:
        return CLIENTS[kind]
    except KeyError:
        raise ProviderError(f"no client for provider kind {kind!r}", permanent=True) from None
