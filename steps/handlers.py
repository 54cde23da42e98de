"""The handler registry: plain Python callables registered by name.

Users write::

    from steps.handlers import handler, RetryableError, PermanentError

    @handler("fetch-source")
    def fetch_source(ctx):
        return {"ok": True}

Handlers are discovered from each installed app's ``handlers`` module and from the
modules named in ``STEVORA_HANDLER_MODULES`` (comma-separated). Any exception other
than ``PermanentError`` counts as retryable until the step's attempts run out.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger("stevora.handlers")


class StepError(Exception):
    """Base of the errors a handler raises on purpose."""

    retryable = True

    def __init__(self, message: str = "", *, details: Any = None) -> None:
        super().__init__(message)
        self.details = details


class RetryableError(StepError):
    """A transient failure: the step is attempted again after its backoff."""

    retryable = True

    def __init__(self, message: str = "", *, details: Any = None, retry_after: float | None = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class PermanentError(StepError):
    """A failure that retrying cannot fix: the step fails at once."""

    retryable = False


@dataclass
class StepContext:
    """What a handler sees of the run. ``config`` is the step's rendered config."""

    run_id: str
    step: str
    key: str
    attempt: int
    idempotency_key: str
    step_idempotency_key: str
    input: dict[str, Any]
    config: Any
    log: logging.LoggerAdapter[logging.Logger]
    workflow: str = ""
    item: Any = None
    index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    heartbeat: Callable[[], None] = lambda: None


Handler = Callable[[StepContext], Any]
F = TypeVar("F", bound=Handler)


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, fn: Handler) -> None:
        existing = self._handlers.get(name)
        if existing is not None and existing is not fn and _qualname(existing) != _qualname(fn):
            raise ImproperlyConfigured(
                f"handler name {name!r} is registered twice: {_qualname(existing)} and {_qualname(fn)}"
            )
        self._handlers[name] = fn

    def get(self, name: str) -> Handler:
        try:
            return self._handlers[name]
        except KeyError:
            raise PermanentError(f"no handler registered under {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def unregister(self, name: str) -> None:
        self._handlers.pop(name, None)


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


registry = HandlerRegistry()


def handler(name: str) -> Callable[[F], F]:
    """Register the decorated callable as the handler ``name``."""
    if not isinstance(name, str) or not name:
        raise ImproperlyConfigured("@handler needs a non-empty name")

    def decorate(fn: F) -> F:
        registry.register(name, fn)
        return fn

    return decorate


def discover() -> None:
    """Import every installed app's ``handlers`` module and STEVORA_HANDLER_MODULES."""
    from . import builtin  # noqa: F401  (registers the built-in handlers)

    for config in apps.get_app_configs():
        module_name = f"{config.name}.handlers"
        if module_name == __name__:
            continue
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
    module_names: list[str] = settings.STEVORA["HANDLER_MODULES"]
    for module_name in module_names:
        try:
            importlib.import_module(module_name)
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"STEVORA_HANDLER_MODULES: cannot import {module_name!r}: {exc}"
            ) from exc
