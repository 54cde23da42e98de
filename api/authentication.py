"""``Authorization: Bearer stv_<prefix>_<secret>`` (or ``X-Api-Key``) authentication."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from .models import ApiKey, split_key

# last_used_at is a hint for the admin, not an audit log: write it at most this often.
TOUCH_EVERY = timedelta(seconds=60)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        raw = self._raw_key(request)
        if raw is None:
            return None
        parts = split_key(raw)
        if parts is None:
            raise exceptions.AuthenticationFailed("API key is malformed; expected stv_<prefix>_<secret>")
        prefix, secret = parts
        key = ApiKey.objects.select_related("user", "workspace").filter(prefix=prefix).first()
        # One message for every failure: no hint which part was wrong.
        if key is None or not key.matches(secret):
            raise exceptions.AuthenticationFailed("invalid API key")
        if not key.is_active:
            raise exceptions.AuthenticationFailed("API key has been revoked")
        if not key.user.is_active:
            raise exceptions.AuthenticationFailed("the user of this API key is inactive")
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at > TOUCH_EVERY:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        return key.user, key

    def _raw_key(self, request: Request) -> str | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer":
                return value.strip() or None
            return None  # Basic or another scheme: not ours
        value = request.META.get("HTTP_X_API_KEY", "")
        return value.strip() or None

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) when no credentials were sent.
        return 'Bearer realm="stevora"'


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "stv_<prefix>_<secret>",
                "description": "An API key from `manage.py create_api_key` or the admin."}
