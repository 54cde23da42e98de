"""drf-spectacular: every operation documents the error bodies it may answer with."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class FieldErrorSerializer(serializers.Serializer):
    field = serializers.CharField(help_text="Path of the bad field, e.g. `input.topic` or `steps[2].handler`.")
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="Machine-readable kind: invalid_input, not_authenticated, "
                                           "authentication_failed, permission_denied, not_found, conflict, "
                                           "throttled, …")
    detail = serializers.CharField(help_text="What went wrong, in words.")
    errors = FieldErrorSerializer(  # type: ignore[assignment]
        many=True, help_text="One entry per bad field (empty when no field is to blame).")


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


class StevoraAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        view = self.view
        errors: dict[str, OpenApiResponse] = {}
        if not getattr(view, "public_endpoint", False):
            errors["401"] = _error("No API key, or an invalid or revoked one.")
            errors["403"] = _error("The key's user lacks the permission.")
            errors["429"] = _error("Rate limit exceeded; see the Retry-After header.")
        errors["404"] = _error("Not found in the caller's workspace (or a bad cursor).")
        if not getattr(view, "public_endpoint", False):
            errors["400"] = _error("Invalid input; `errors` names each bad field.")
        if self.method == "POST":
            errors["409"] = _error("The object is not in a state that allows this (e.g. cancelling a finished run).")
        for code, resp in errors.items():
            if code not in responses:
                responses[code] = self._get_response_for_code(resp, code, direction=direction)
        return responses

    def _get_response_headers_for_code(self, status_code: Any, direction: Any = "response") -> dict[str, Any]:
        headers: dict[str, Any] = super()._get_response_headers_for_code(status_code, direction)
        if str(status_code) == "429":
            headers["Retry-After"] = {"schema": {"type": "integer"},
                                      "description": "Seconds to wait before the next request."}
        return headers
