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


def may_create_key_for(actor: Any, owner: Any) -> bool:
    """A key carries its owner's permissions: you may mint one for yourself; for someone else
    only as a superuser or with ``api.add_apikey_for_others``; for a superuser only as one."""
    if actor.is_superuser:
        return True
    if not actor.has_perm("api.add_apikey"):
        return False
    if owner.pk == actor.pk:
        return True
    return bool(actor.has_perm("api.add_apikey_for_others")) and not owner.is_superuser


def check_key_owner(actor: Any, owner: Any) -> None:
    """Raise ApiKeyError (naming ``user``) unless ``actor`` may create a key owned by ``owner``."""
    if may_create_key_for(actor, owner):
        return
    if not actor.has_perm("api.add_apikey"):
        raise ApiKeyError("user: you may not create API keys")
    if owner.is_superuser:
        raise ApiKeyError(f"user: only a superuser may create a key for the superuser {owner}")
    raise ApiKeyError(f"user: you may create keys only for yourself ({actor}); a key for {owner} needs the "
                      "'Can create API keys for other users' permission")


def create_key(*, name: str, user: Any, workspace: Workspace | str | None = None, rate: str = "",
               actor: Any = None) -> NewKey:
    """Create a key and return it with its plaintext (the only time it exists).

    ``actor`` is the signed-in user asking (the admin passes ``request.user``) and must be
    allowed to (``check_key_owner``). None means the operator's shell (``create_api_key``)
    or code, which can read the database anyway.
    """
    if not isinstance(name, str) or not name.strip():
        raise ApiKeyError("name: must be a non-empty string")
    if isinstance(user, str):
        found = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: user}).first()
        if found is None:
            raise ApiKeyError(f"user: no user named {user!r}")
        user = found
    if actor is not None:
        check_key_owner(actor, user)
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


__all__ = ["ApiKeyError", "check_key_owner", "check_rate", "create_key", "may_create_key_for", "revoke"]
