"""Creating and revoking API keys (the admin and ``create_api_key`` call these)."""

from __future__ import annotations

import re
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from runs.models import Workspace

from .models import KEY_PREFIX, ApiKey, NewKey, generate_prefix, hash_secret, revoke

RATE_RE = re.compile(r"^\d+/(s|sec|second|m|min|minute|h|hour|d|day)$")


class ApiKeyError(ValueError):
    """A key could not be created; the message names the field."""


def check_rate(rate: str) -> str:
    rate = (rate or "").strip()
    if rate and not RATE_RE.match(rate):
        raise ApiKeyError(f"rate: {rate!r} is not a rate like '120/min', '10/s' or '5000/hour'")
    return rate


def create_key(*, name: str, user: Any, workspace: Workspace | str | None = None, rate: str = "") -> NewKey:
    """Create a key and return it with its plaintext (the only time it exists)."""
    if not isinstance(name, str) or not name.strip():
        raise ApiKeyError("name: must be a non-empty string")
    if isinstance(user, str):
        found = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: user}).first()
        if found is None:
            raise ApiKeyError(f"user: no user named {user!r}")
        user = found
    if isinstance(workspace, str):
        ws = Workspace.objects.filter(slug=workspace).first()
        if ws is None:
            raise ApiKeyError(f"workspace: no workspace {workspace!r}")
        workspace = ws
    workspace = workspace or Workspace.default()
    rate = check_rate(rate)
    secret = secrets.token_urlsafe(32)
    for _ in range(5):
        prefix = generate_prefix()
        try:
            with transaction.atomic():
                key = ApiKey.objects.create(name=name.strip(), prefix=prefix, secret_hash=hash_secret(secret),
                                            workspace=workspace, user=user, rate=rate)
            return NewKey(key, f"{KEY_PREFIX}_{prefix}_{secret}")
        except IntegrityError:
            continue  # prefix collision (1 in 36^10): draw another
    raise ApiKeyError("prefix: could not draw a unique prefix")


__all__ = ["ApiKeyError", "check_rate", "create_key", "revoke"]
