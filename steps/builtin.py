"""Built-in handlers: ``http.request``, ``noop`` and ``echo``."""

from __future__ import annotations

from typing import Any

import httpx

from . import outbound
from .handlers import PermanentError, RetryableError, StepContext, handler

_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
_MAX_BODY = 5_000_000


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
    method = str(config.get("method", "GET")).upper()
    headers = {str(k): str(v) for k, v in (config.get("headers") or {}).items()}
    headers.setdefault("Idempotency-Key", ctx.step_idempotency_key)
    timeout = float(config.get("timeout_seconds", 30))
    try:
        # Resolved once, checked, and connected to that address only (no DNS rebinding);
        # redirects are not followed: a 3xx is returned as output.
        response = outbound.request(method, url, headers=headers, params=config.get("params"),
                                    json=config.get("json"), content=config.get("body"), timeout=timeout)
    except outbound.RefusedAddress as exc:
        raise PermanentError(f"http.request: {exc}") from None
    except outbound.ResolveError as exc:
        raise RetryableError(f"http.request: {exc}") from None
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
