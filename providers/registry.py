"""Finding providers: rows, named chains, the env defaults, and their keys.

``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` present (or ``*_FILE``) means a provider
named ``openai`` / ``anthropic`` exists: its row is created on first use, holding the
variable's *name* only (model from ``OPENAI_MODEL`` / ``ANTHROPIC_MODEL``).

Provider rows are kept in this process (``_rows``, by name) so that a step does not read
them again. The copy is never trusted for long or blindly:

* every request is preceded by its *started* row, whose INSERT checks that the provider row
  still has the ``updated_at`` and ``enabled`` of the copy (``providers.chain``; for a
  rate-limited provider ``providers.limits.reserve`` checks first). A copy found stale raises
  ``StaleProvider`` before anything is sent: the chain reads the row again and starts over
  with it. So an edit saved through the model (admin, ``load_providers``) and any
  disabling are seen by the next request of every worker;
* a provider is skipped (disabled, key variable unset, circuit open) only on a copy read in
  this very call (``fresh``): one primary-key read, paid only on the way past a provider that
  does not answer, so a skip is never decided on a row that has since been re-enabled or
  re-created (a copy the deleted row left behind would otherwise skip its successor);
* an entry lives at most ``CONFIG_CACHE_SECONDS``: what an UPDATE written around the model
  changes without touching ``updated_at`` is seen within that bound.

Keys are read from the environment (or ``NAME_FILE``) at every call, never cached: a
rotated key file is used by the next request.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction

from steps.secrets import secret

from .models import Provider, ProviderChain, ProviderKind

ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "openai": {"kind": ProviderKind.OPENAI, "api_key_env": "OPENAI_API_KEY", "model_env": "OPENAI_MODEL",
               "model": "gpt-4o-mini", "input_price_per_mtok": "0.15", "output_price_per_mtok": "0.60"},
    "anthropic": {"kind": ProviderKind.ANTHROPIC, "api_key_env": "ANTHROPIC_API_KEY",
                  "model_env": "ANTHROPIC_MODEL", "model": "claude-3-5-haiku-latest",
                  "input_price_per_mtok": "0.80", "output_price_per_mtok": "4.00"},
}


class ResolveError(ValueError):
    """The step names a provider or chain that does not exist."""


class StaleProvider(Exception):  # noqa: N818 (control flow: the chain reads the row again)
    """This process's copy of a provider row is out of date (edited, disabled or deleted)."""

    def __init__(self, provider: Provider) -> None:
        super().__init__(f"provider {provider.name!r} changed since this process read it")
        self.provider = provider


# The longest a copy of a provider row is used without the row being checked by a request
# (see the module docstring: requests check their provider's row anyway).
CONFIG_CACHE_SECONDS = 10.0
# name -> (time.monotonic() the row was last read or confirmed, the copy)
_rows: dict[str, tuple[float, Provider]] = {}
_rows_lock = threading.Lock()


def remember(provider: Provider) -> None:
    with _rows_lock:
        _rows[provider.name] = (time.monotonic(), provider)


def confirmed(provider: Provider) -> None:
    """A request's check found this copy current."""
    entry = _rows.get(provider.name)
    if entry is not None and entry[1] is provider:
        _rows[provider.name] = (time.monotonic(), provider)


def forget(name: str) -> None:
    with _rows_lock:
        _rows.pop(name, None)


def forget_all() -> None:
    with _rows_lock:
        _rows.clear()


def on_provider_changed(sender: Any, instance: Provider, **kwargs: Any) -> None:
    """post_save / post_delete: this process reads the row again at its next use (other
    processes find out through their next request's check)."""
    forget(instance.name)


def fresh(name: str) -> Provider | None:
    """The provider row as it is now (and remembered), or None when it is gone."""
    provider = Provider.objects.filter(name=name).first()
    if provider is None:
        forget(name)
    else:
        remember(provider)
    return provider


def api_key(provider: Provider) -> str | None:
    """The key from the environment variable the row names (or ``NAME_FILE``); never from a row."""
    if not provider.api_key_env:
        return None
    try:
        return secret(provider.api_key_env)
    except ImproperlyConfigured:
        return None


def _env_has_key(name: str) -> bool:
    return bool(os.environ.get(name) or os.environ.get(f"{name}_FILE"))


def ensure_env_defaults() -> list[Provider]:
    """Create the rows of the env-default providers whose key variable is set."""
    created = []
    for name, spec in ENV_DEFAULTS.items():
        if not _env_has_key(spec["api_key_env"]) or Provider.objects.filter(name=name).exists():
            continue
        try:
            with transaction.atomic():
                created.append(Provider.objects.create(
                    name=name, kind=spec["kind"], api_key_env=spec["api_key_env"],
                    model=os.environ.get(spec["model_env"]) or spec["model"],
                    input_price_per_mtok=spec["input_price_per_mtok"],
                    output_price_per_mtok=spec["output_price_per_mtok"],
                    priority=10 if name == "openai" else 20,
                ))
        except IntegrityError:
            pass  # another worker created it first
    return created


@dataclass
class Route:
    """The ordered providers an llm step tries; ``model`` overrides the first one's model."""

    providers: list[Provider]
    first_model: str | None = None

    def model_for(self, index: int) -> str:
        provider = self.providers[index]
        return self.first_model if index == 0 and self.first_model else provider.model


def _by_name(names: list[str]) -> dict[str, Provider]:
    now = time.monotonic()
    rows: dict[str, Provider] = {}
    for name in names:
        entry = _rows.get(name)
        if entry is not None and now - entry[0] < CONFIG_CACHE_SECONDS:
            rows[name] = entry[1]
    unknown = [n for n in names if n not in rows]
    if not unknown:
        return rows
    found = {p.name: p for p in Provider.objects.filter(name__in=unknown)}
    missing = [n for n in unknown if n not in found and n in ENV_DEFAULTS]
    if missing:
        ensure_env_defaults()
        found = {p.name: p for p in Provider.objects.filter(name__in=unknown)}
    for provider in found.values():
        remember(provider)
    rows.update(found)
    return rows


def resolve(config: dict[str, Any]) -> Route:
    """Which providers an llm step tries, in order.

    ``chain`` (a named chain) or ``provider`` (a name) comes first, then ``fallback``.
    ``model`` alone may name a provider, or the model of the enabled providers serving
    it. Nothing named: the chain called ``default``, else every enabled provider by priority.
    """
    names: list[str] = []
    first_model: str | None = None
    model = config.get("model")
    if config.get("chain"):
        chain = ProviderChain.objects.filter(name=config["chain"]).first()
        if chain is None:
            raise ResolveError(f"chain: no provider chain named {config['chain']!r}")
        names.extend(chain.providers)
    if config.get("provider"):
        names.append(config["provider"])
        first_model = model
    elif model and not config.get("chain"):
        if _by_name([model]).get(model):
            names.append(model)
        else:
            serving = list(Provider.objects.filter(model=model, enabled=True).values_list("name", flat=True))
            if not serving and not config.get("fallback"):
                raise ResolveError(f"model: no provider named {model!r} and no enabled provider serves that model")
            names.extend(serving)
    names.extend(config.get("fallback") or [])
    if not names:
        ensure_env_defaults()
        chain = ProviderChain.objects.filter(name="default").first()
        names = list(chain.providers) if chain else list(
            Provider.objects.filter(enabled=True).values_list("name", flat=True))
        if not names:
            raise ResolveError("no provider configured: add one in the admin, with load_providers, "
                               "or set OPENAI_API_KEY / ANTHROPIC_API_KEY")
    ordered = list(dict.fromkeys(names))  # a provider named twice is tried once
    rows = _by_name(ordered)
    unknown = [n for n in ordered if n not in rows]
    if unknown:
        raise ResolveError(f"no provider named {', '.join(repr(n) for n in unknown)}")
    return Route([rows[n] for n in ordered], first_model)
