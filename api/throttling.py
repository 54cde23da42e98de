"""Per-key rate limits (DRF throttles on the default cache: Redis in production, local memory embedded)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from .models import ApiKey

logger = logging.getLogger("stevora.api")


class ApiKeyRateThrottle(SimpleRateThrottle):
    """One bucket per API key (per user for browser sessions, per address for anonymous calls).

    The rate is the key's own ``rate`` or ``settings.STEVORA["API_RATE"]``, read per
    request (not frozen at import as DRF's ``THROTTLE_RATES`` is).
    """

    scope = "api_key"

    def __init__(self) -> None:  # no super(): it would look the rate up in THROTTLE_RATES
        self.rate: str | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        auth = getattr(request, "auth", None)
        self.rate = (auth.rate if isinstance(auth, ApiKey) and auth.rate else None) or settings.STEVORA.get(
            "API_RATE") or None
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        try:
            return super().allow_request(request, view)
        except Exception as exc:
            if not _cache_outage(exc):
                raise
            # The counters' Redis is down: serve the request (the limit protects us from
            # floods; refusing every call while Redis restarts would be the outage itself).
            logger.warning("rate-limit cache unavailable; letting the request through", exc_info=True)
            return True

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        auth = getattr(request, "auth", None)
        if isinstance(auth, ApiKey):
            ident = f"key:{auth.prefix}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return f"stevora:throttle:{ident}"


def _cache_outage(exc: Exception) -> bool:
    """Is ``exc`` the counters' cache being unreachable? (redis-py is looked up, not imported:
    when the cache is Redis it is loaded already, and the embedded default never loads it.)"""
    redis = sys.modules.get("redis")
    return isinstance(exc, OSError) or (redis is not None and isinstance(exc, redis.exceptions.RedisError))
