"""``GET /metrics``: the Prometheus text exposition (``runs.metrics``), read from the database.

Served to loopback clients (a Prometheus or agent on the same host) without credentials.
Any other client must send ``Authorization: Bearer <STEVORA_METRICS_TOKEN>``; with no token
set, it is refused. A request that came through a proxy (``X-Forwarded-For`` or
``Forwarded``) is not a loopback client, even when the proxy connects from 127.0.0.1.
"""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from runs import metrics as run_metrics


def _loopback(request: HttpRequest) -> bool:
    if "HTTP_X_FORWARDED_FOR" in request.META or "HTTP_FORWARDED" in request.META:
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def _token_ok(request: HttpRequest) -> bool:
    token: str = settings.STEVORA["METRICS_TOKEN"]
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                              token.encode())


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not (_loopback(request) or _token_ok(request)):
        if settings.STEVORA["METRICS_TOKEN"]:
            response = HttpResponse("metrics: send Authorization: Bearer <STEVORA_METRICS_TOKEN>\n",
                                    status=401, content_type="text/plain; charset=utf-8")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        return HttpResponse("metrics are served to loopback clients only; set STEVORA_METRICS_TOKEN to let a "
                            "scraper elsewhere in\n", status=403, content_type="text/plain; charset=utf-8")
    response = HttpResponse(run_metrics.render(), content_type=run_metrics.CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    return response
