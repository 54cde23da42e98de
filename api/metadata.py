"""``OPTIONS`` on any endpoint: its name, description and media types.

DRF's default metadata also describes the fields of the view's serializer, which
needs a ``serializer_class``; our views pick serializers per method and have none,
so ``OPTIONS`` was a 500. The OpenAPI schema at ``/api/schema/`` is the field
reference; ``OPTIONS`` answers what every view can answer.
"""

from __future__ import annotations

from typing import Any

from rest_framework.metadata import SimpleMetadata
from rest_framework.request import Request


class ApiMetadata(SimpleMetadata):
    def determine_metadata(self, request: Request, view: Any) -> dict[str, Any]:
        return {
            "name": view.get_view_name(),
            "description": view.get_view_description(),
            "renders": [renderer.media_type for renderer in view.renderer_classes],
            "parses": [parser.media_type for parser in view.parser_classes],
            "schema": "/api/schema/",
        }
