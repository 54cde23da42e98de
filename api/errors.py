"""One error body for every failure, naming each bad field.

    {"type": "validation_error", "detail": "invalid input", "errors": [{"field": "input.topic", "message": "…"}]}

DRF's own exceptions (validation, auth, throttling with its ``Retry-After`` header)
and the domain errors the services raise (``StartError``, ``DefinitionError``,
``NotFound``, ``IllegalTransition``, ``DecisionError``, ``EventError``) all end here,
so views call one service function and let its error speak.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

_FIELD_MESSAGE = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.+)$", re.S)


def _flatten(detail: Any, prefix: str = "") -> list[dict[str, str]]:
    """DRF's nested ``{"field": ["msg"]}`` as a flat list of ``{"field", "message"}``."""
    out: list[dict[str, str]] = []
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = str(key)
            # Errors about the body as a whole (not a dict, cross-field checks) name "body".
            path = (prefix or "body") if name == "non_field_errors" else (f"{prefix}.{name}" if prefix else name)
            out.extend(_flatten(value, path))
    elif isinstance(detail, list):
        if all(not isinstance(v, (dict, list)) for v in detail):
            out.extend({"field": prefix, "message": str(v)} for v in detail)
        else:
            for index, value in enumerate(detail):
                out.extend(_flatten(value, f"{prefix}[{index}]"))
    else:
        out.append({"field": prefix or "body", "message": str(detail)})
    return out


def body(kind: str, detail: str, errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"type": kind, "detail": detail, "errors": errors or []}


def _pairs(errors: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"field": path, "message": message} for path, message in errors]


def _field_error(message: str, fields: set[str] | None = None) -> list[dict[str, str]]:
    match = _FIELD_MESSAGE.match(message)
    if match and (fields is None or match.group(1) in fields):
        return [{"field": match.group(1), "message": match.group(2)}]
    return []


def _domain(exc: Exception) -> Response | None:
    from approvals.services import ApprovalNotFound, DecisionError
    from events.services import EventError
    from runs.definitions import DefinitionError
    from runs.models import IllegalTransition
    from runs.services import NotFound, StartError

    if isinstance(exc, DefinitionError):
        # Paths are inside the document (``steps[1].handler``); the document itself is ``definition``.
        errors = [(path or "definition", message) for path, message in exc.errors]
        return Response(body("invalid_definition", "the workflow definition is invalid", _pairs(errors)), 400)
    if isinstance(exc, StartError):
        first = str(exc).split("\n", 1)[0]
        return Response(body("invalid_input", first, _pairs(exc.errors)), 400)
    if isinstance(exc, ApprovalNotFound):
        return Response(body("not_found", str(exc)), 404)
    if isinstance(exc, DecisionError):
        fields = _field_error(str(exc), {"approve", "comment", "content"})
        if fields:
            return Response(body("invalid_input", str(exc), fields), 400)
        return Response(body("conflict", str(exc)), 409)
    if isinstance(exc, EventError):
        return Response(body("invalid_input", str(exc), _field_error(str(exc))), 400)
    if isinstance(exc, NotFound):
        return Response(body("not_found", str(exc)), 404)
    if isinstance(exc, IllegalTransition):
        return Response(body("conflict", str(exc)), 409)
    return None


_KIND = {
    status.HTTP_400_BAD_REQUEST: "invalid_input",
    status.HTTP_401_UNAUTHORIZED: "not_authenticated",
    status.HTTP_403_FORBIDDEN: "permission_denied",
    status.HTTP_404_NOT_FOUND: "not_found",
    status.HTTP_405_METHOD_NOT_ALLOWED: "method_not_allowed",
    status.HTTP_406_NOT_ACCEPTABLE: "not_acceptable",
    status.HTTP_409_CONFLICT: "conflict",
    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE: "unsupported_media_type",
    status.HTTP_429_TOO_MANY_REQUESTS: "throttled",
}


def handle(exc: Exception, context: dict[str, Any]) -> Response | None:
    domain = _domain(exc)
    if domain is not None:
        return domain
    if isinstance(exc, DjangoPermissionDenied) and str(exc):
        # The services explain a refusal ("bob lacks the permission …"); keep their words.
        exc = exceptions.PermissionDenied(str(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "not found")
    response = exception_handler(exc, context)
    if response is None:
        return None  # a bug: Django's 500 page, logged with its traceback
    kind = _KIND.get(response.status_code, "error")
    if isinstance(exc, exceptions.ValidationError):
        response.data = body("invalid_input", "invalid input", _flatten(exc.detail))
    else:
        detail = getattr(exc, "detail", None)
        message = str(detail) if detail is not None and not isinstance(detail, (dict, list)) else kind
        wait = getattr(exc, "wait", None)
        if isinstance(exc, exceptions.Throttled) and wait is not None:
            message = f"rate limit exceeded; retry in {int(wait) + 1} seconds"
        response.data = body(getattr(exc, "default_code", None) or kind, message)
    return response


def not_found(request: Any, exception: Exception | None = None) -> Any:
    """``handler404``: a URL under /api/ that matches no route gets the JSON error body too."""
    from django.http import JsonResponse
    from django.views.defaults import page_not_found

    if request.path.startswith("/api/"):
        return JsonResponse(body("not_found", f"no API endpoint at {request.path}"), status=404)
    return page_not_found(request, exception)
