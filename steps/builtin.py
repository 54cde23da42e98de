"""Built-in handlers: ``http.request``, ``noop`` and ``echo``."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from .handlers import PermanentError, RetryableError, StepContext, handler

_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
_MAX_BODY = 5_000_000


def _refuse_private(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise PermanentError(f"http.request: url must be http(s), got {url!r}")
    host = parts.hostname
    if not host:
        raise PermanentError(f"http.request: url has no host: {url!r}")
    if settings.STEVORA["HTTP_ALLOW_PRIVATE"]:
        return
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as exc:
        raise RetryableError(f"http.request: cannot resolve {host!r}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if (address.is_private or address.is_loopback or address.is_link_local or address.is_reserved
                or address.is_multicast or address.is_unspecified):
            raise PermanentError(
                f"http.request: {host} resolves to {address}, a private or loopback address; "
                "set STEVORA_HTTP_ALLOW_PRIVATE=true to allow it"
            )


@handler("http.request")
def http_request(ctx: StepContext) -> dict[str, Any]:
    """Make one HTTP request. Config: url, method, headers, params, json, body, timeout_seconds.

    408/425/429/5xx and network errors are retryable; any other status is returned as
    output (``{"status", "headers", "body"}``) for a condition to inspect.
    """
    config = ctx.config or {}
    if not isinstance(config, dict) or not isinstance(config.get("url"), str):
        raise PermanentError("http.request: config.url (a string) is required")
    url = config["url"]
    _refuse_private(url)
    method = str(config.get("method", "GET")).upper()
    headers = {str(k): str(v) for k, v in (config.get("headers") or {}).items()}
    headers.setdefault("Idempotency-Key", ctx.step_idempotency_key)
    timeout = float(config.get("timeout_seconds", 30))
    try:
        response = httpx.request(
            method, url, headers=headers, params=config.get("params"), json=config.get("json"),
            content=config.get("body"), timeout=timeout, follow_redirects=False,
        )
    except httpx.TimeoutException as exc:
        raise RetryableError(f"http.request: {method} {url} timed out after {timeout}s") from exc
    except httpx.HTTPError as exc:
        raise RetryableError(f"http.request: {method} {url} failed: {exc}") from exc
    if response.status_code in _RETRYABLE_STATUS:
        retry_after = response.headers.get("retry-after")
        raise RetryableError(
            f"http.request: {method} {url} answered {response.status_code}",
            retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
        )
    body: Any
    content = response.content[:_MAX_BODY]
    if "json" in response.headers.get("content-type", ""):
        try:
            body = response.json()
        except ValueError:
            body = content.decode(errors="replace")
    else:
        body = content.decode(errors="replace")
    return {"status": response.status_code, "headers": dict(response.headers), "body": body}


@handler("noop")
def noop(ctx: StepContext) -> None:
    return None


@handler("echo")
def echo(ctx: StepContext) -> Any:
    """Return the rendered config (handy for shaping data between steps)."""
    return ctx.config
