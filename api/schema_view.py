"""``/api/schema/``, generated once per process under a lock.

drf-spectacular's generator is not safe to run in two threads at once (a threaded
gunicorn worker answering several first requests to ``/api/schema/`` answered most
of them with a 500), and the schema never changes while the process runs. (A module
of its own: ``api.schema`` is loaded by DRF's settings, before drf-spectacular's views
may be imported.)
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from django.http import HttpResponse
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response


class _FormatParameter(DefaultContentNegotiation):
    """``?format=json`` chooses the schema's format (the API itself has one format and no such parameter)."""

    settings = SimpleNamespace(URL_FORMAT_OVERRIDE="format")  # type: ignore[assignment]


class SchemaView(SpectacularAPIView):
    """``/api/schema/``: generated on the first request, under a lock, then served from memory."""

    content_negotiation_class = _FormatParameter

    _lock = threading.Lock()
    _schema: dict[str, Any] | None = None

    def _get_schema_response(self, request: Request) -> Response:
        # One schema per process: the API is not versioned, and the schema is public (it does not
        # depend on who asks), so no request parameter may grow a cache here.
        with SchemaView._lock:
            if SchemaView._schema is None:
                generator = self.generator_class(urlconf=self.urlconf, api_version=None, patterns=self.patterns)
                SchemaView._schema = generator.get_schema(request=request, public=True)
            schema = SchemaView._schema
        return Response(data=schema,
                        headers={"Content-Disposition": f'inline; filename="{self._get_filename(request, None)}"'})


class _HtmlPageOptions:
    """``OPTIONS`` on an HTML page: its allowed methods, no body (DRF's metadata answer needs a JSON renderer)."""

    def options(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        return HttpResponse(status=200, headers={"Allow": "GET, HEAD, OPTIONS"})


class SwaggerView(_HtmlPageOptions, SpectacularSwaggerView):  # type: ignore[misc]
    pass


class RedocView(_HtmlPageOptions, SpectacularRedocView):  # type: ignore[misc]
    pass
