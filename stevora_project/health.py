"""``GET /healthz``: 200 when this process can reach its database, 503 (saying why) when not.
For load balancers and compose's healthcheck; no authentication, nothing secret in the answer."""

from __future__ import annotations

from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse


def healthz(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        connection.close()  # a broken connection is opened afresh next time
        return JsonResponse({"status": "unavailable", "database": f"{type(exc).__name__}: {exc}".strip()},
                            status=503)
    return JsonResponse({"status": "ok", "database": connection.vendor})
