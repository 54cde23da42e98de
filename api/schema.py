"""drf-spectacular: every operation documents exactly the error answers it may give."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class FieldErrorSerializer(serializers.Serializer):
    field = serializers.CharField(help_text="Path of the bad field, e.g. `input.topic` or `steps[2].handler`.")
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="Machine-readable kind: invalid_input, invalid_definition, "
                                           "parse_error, not_authenticated, authentication_failed, "
                                           "permission_denied, not_found, conflict, request_too_large, "
                                           "unsupported_media_type, not_acceptable, throttled")
    detail = serializers.CharField(help_text="What went wrong, in words.")
    errors = FieldErrorSerializer(  # type: ignore[assignment]
        many=True, help_text="One entry per bad field (empty when no field is to blame).")


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


class StevoraAutoSchema(AutoSchema):
    """Adds the error answers each operation can give, and only those.

    Views say what the generic rules cannot see: ``may_conflict = True`` for a 409.
    """

    def _error_responses(self) -> dict[str, OpenApiResponse]:
        view = self.view
        public = getattr(view, "public_endpoint", False)
        unsafe = self.method not in ("GET", "HEAD", "OPTIONS")
        errors: dict[str, OpenApiResponse] = {}
        if public:
            return errors
        paginated = not unsafe and getattr(view, "pagination_class", None) is not None
        # Every operation: a query string or path with a NUL character is refused (api.middleware).
        errors["400"] = _error("Invalid input; `errors` names each bad field.")
        errors["401"] = _error("No API key, or an invalid or revoked one.")
        if unsafe:
            errors["403"] = _error("The key's user lacks the permission.")
        if "{" in self.path or paginated:
            errors["404"] = _error("Not found in the caller's workspace (or a bad pagination cursor).")
        errors["406"] = _error("The Accept header asks for something other than JSON.")
        if getattr(view, "may_conflict", False):
            errors["409"] = _error("The object is not in a state that allows this "
                                   "(e.g. cancelling a finished run, deciding a decided approval).")
        if unsafe:
            errors["413"] = _error("The body is larger than the server's limit (STEVORA_API_MAX_BODY_BYTES).")
            errors["415"] = _error("The body is not JSON (send Content-Type: application/json).")
        errors["429"] = _error("Rate limit exceeded; see the Retry-After header.")
        return errors

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        for code, resp in self._error_responses().items():
            if code not in responses:
                responses[code] = self._get_response_for_code(resp, code, direction=direction)
        return responses

    def _get_response_headers_for_code(self, status_code: Any, direction: Any = "response") -> dict[str, Any]:
        headers: dict[str, Any] = super()._get_response_headers_for_code(status_code, direction)
        if str(status_code) == "429":
            headers["Retry-After"] = {"schema": {"type": "integer"},
                                      "description": "Seconds to wait before the next request."}
        return headers
