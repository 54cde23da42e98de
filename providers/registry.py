"""Finding providers: rows, named chains, the env defaults, and their keys.

``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` present (or ``*_FILE``) means a provider
named ``openai`` / ``anthropic`` exists: its row is created on first use, holding the
variable's *name* only (model from ``OPENAI_MODEL`` / ``ANTHROPIC_MODEL``).
"""

from __future__ import annotations

import os
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
    rows = {p.name: p for p in Provider.objects.filter(name__in=names)}
    missing = [n for n in names if n not in rows and n in ENV_DEFAULTS]
    if missing:
        ensure_env_defaults()
        rows = {p.name: p for p in Provider.objects.filter(name__in=names)}
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
