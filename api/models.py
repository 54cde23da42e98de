"""API keys: a visible prefix to find the row, a hashed secret to check it.

A key reads ``stv_<prefix>_<secret>``. Only the prefix and the SHA-256 of the secret
are stored; the whole key is shown once, when it is created. The secret has 256
bits of entropy, so a fast hash is enough (no password stretching needed): nobody
can guess a preimage, and comparing digests in constant time leaks nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

KEY_PREFIX = "stv"
_ALPHABET = string.ascii_lowercase + string.digits


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(raw: str) -> tuple[str, str] | None:
    """``stv_<prefix>_<secret>`` -> (prefix, secret), or None when it is not shaped like a key."""
    parts = raw.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class ApiKey(models.Model):
    """A credential for other services: bound to a workspace and to the user whose permissions it carries."""

    name = models.CharField(max_length=200, help_text="What the key is for (e.g. 'billing-service').")
    prefix = models.CharField(max_length=16, unique=True, editable=False,
                              help_text="The visible part of the key: stv_<prefix>_…")
    secret_hash = models.CharField(max_length=64, editable=False)
    workspace = models.ForeignKey("runs.Workspace", on_delete=models.CASCADE, related_name="api_keys")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    # Per-key throttle rate in DRF's notation ("120/min"); blank: settings.STEVORA["API_RATE"].
    rate = models.CharField(max_length=32, blank=True, default="",
                            help_text="Requests allowed, e.g. '120/min' or '10/s'; blank for the default.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]
        # add_apikey alone creates keys for yourself only; a key carries its owner's
        # permissions, so minting one for someone else is a separate, stronger right.
        permissions = [("add_apikey_for_others", "Can create API keys for other users")]
        indexes = [
            # The admin list: active keys of a workspace.
            models.Index(fields=["workspace"], condition=Q(revoked_at__isnull=True), name="apikey_active_ws"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({KEY_PREFIX}_{self.prefix}_…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_hash, hash_secret(secret))


@dataclass
class NewKey:
    key: ApiKey
    plaintext: str  # shown once; never stored


def generate_prefix() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(10))


def revoke(key: ApiKey) -> bool:
    """Revoke a key; False when it was revoked already (a guarded update)."""
    now = timezone.now()
    done = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now) == 1
    if done:
        key.revoked_at = now
    return done
