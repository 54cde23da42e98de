"""Provider services: loading provider and chain configuration (one transaction, all or nothing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import yaml
from django.core.exceptions import ValidationError
from django.db import transaction

from .models import Provider, ProviderChain

PROVIDER_FIELDS = frozenset({
    "name", "kind", "model", "base_url", "api_key_env", "enabled", "priority", "timeout_seconds",
    "connect_timeout_seconds", "max_retries", "backoff_seconds", "max_backoff_seconds", "max_retry_after_seconds",
    "input_price_per_mtok", "output_price_per_mtok", "breaker_threshold", "breaker_cooldown_seconds", "options",
    "requests_per_minute", "tokens_per_minute", "rate_window_seconds",
})
NULLABLE_FIELDS = frozenset({"requests_per_minute", "tokens_per_minute"})
SECRET_LOOKING = frozenset({"api_key", "key", "token", "secret", "password", "authorization"})


class ConfigError(ValueError):
    """The configuration was refused; ``errors`` lists (path, message)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("invalid provider configuration:\n  " + "\n  ".join(f"{p}: {m}" for p, m in errors))


@dataclass
class LoadSummary:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)


def parse_config_text(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError([("", f"not valid YAML: {getattr(exc, 'problem', None) or exc}{where}")]) from None


def _validation_errors(path: str, exc: ValidationError) -> list[tuple[str, str]]:
    if hasattr(exc, "error_dict"):
        return [(f"{path}.{name}", " ".join(str(m) for e in errs for m in e.messages))
                for name, errs in exc.error_dict.items()]
    return [(path, " ".join(exc.messages))]


def load_config(document: Any) -> LoadSummary:
    """Create or update the providers and chains of ``document`` (``providers:`` list, ``chains:``)."""
    if not isinstance(document, dict):
        raise ConfigError([("", "the file must hold a mapping with 'providers' and/or 'chains'")])
    unknown = set(document) - {"providers", "chains"}
    errors: list[tuple[str, str]] = [(k, "unknown section") for k in sorted(unknown)]
    providers = document.get("providers") or []
    chains = document.get("chains") or []
    if not isinstance(providers, list):
        errors.append(("providers", "must be a list"))
        providers = []
    if isinstance(chains, dict):
        chains = [{"name": k, "providers": v} for k, v in chains.items()]
    if not isinstance(chains, list):
        errors.append(("chains", "must be a list or a mapping of name to provider names"))
        chains = []
    summary = LoadSummary()
    with transaction.atomic():  # nothing half-written: any error rolls every row back
        for i, raw in enumerate(providers):
            errors.extend(_load_provider(f"providers[{i}]", raw, summary))
        for i, raw in enumerate(chains):
            errors.extend(_load_chain(f"chains[{i}]", raw, summary))
        if errors:
            raise ConfigError(errors)
    return summary


def _load_provider(path: str, raw: Any, summary: LoadSummary) -> list[tuple[str, str]]:
    if not isinstance(raw, dict):
        return [(path, "must be a mapping")]
    errors = []
    for key in sorted(set(raw) - PROVIDER_FIELDS):
        if key.lower() in SECRET_LOOKING:
            errors.append((f"{path}.{key}", "keys are never stored: put the key in an environment variable and "
                                            "name that variable in api_key_env"))
        else:
            errors.append((f"{path}.{key}", "unknown field"))
    if not raw.get("name"):
        errors.append((f"{path}.name", "required"))
    if errors:
        return errors
    provider = Provider.objects.filter(name=raw["name"]).first() or Provider(name=raw["name"])
    created = provider.pk is None
    for key, value in raw.items():
        if key.endswith("_per_mtok") and isinstance(value, float):
            value = Decimal(str(value))  # 0.15, not 0.1499999999999999944...
        setattr(provider, key, value if value is not None else (None if key in NULLABLE_FIELDS else ""))
    try:
        provider.full_clean()
    except ValidationError as exc:
        return _validation_errors(path, exc)
    provider.save()
    (summary.created if created else summary.updated).append(provider.name)
    return []


def _load_chain(path: str, raw: Any, summary: LoadSummary) -> list[tuple[str, str]]:
    if not isinstance(raw, dict) or set(raw) - {"name", "providers", "description"}:
        return [(path, "must be a mapping with name, providers and optionally description")]
    chain = ProviderChain.objects.filter(name=raw.get("name")).first() or ProviderChain(name=raw.get("name") or "")
    chain.providers = raw.get("providers")
    chain.description = raw.get("description") or ""
    try:
        chain.full_clean()
    except ValidationError as exc:
        return _validation_errors(path, exc)
    chain.save()
    summary.chains.append(chain.name)
    return []
