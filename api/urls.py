"""The public schema pages: ``/api/schema/``, ``/api/docs/``, ``/api/redoc/``.

The ``/api/v1/`` routes are wired in ``stevora_project/urls.py``: each app's views
live in that app, and this shared plumbing imports none of them.
"""

from __future__ import annotations

from typing import Any

from django.urls import path
from rest_framework.permissions import AllowAny

from .schema_view import RedocView, SchemaView, SwaggerView

# The schema and its pages need no key (they describe the API, they do not reveal data).
PUBLIC: dict[str, Any] = {"authentication_classes": [], "permission_classes": [AllowAny], "throttle_classes": []}

urlpatterns = [
    path("schema/", SchemaView.as_view(**PUBLIC), name="schema"),
    path("docs/", SwaggerView.as_view(url_name="api:schema", **PUBLIC), name="swagger-ui"),
    path("redoc/", RedocView.as_view(url_name="api:schema", **PUBLIC), name="redoc"),
]
