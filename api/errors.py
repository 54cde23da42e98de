"""One error body for every failure, naming each bad field.

    {"type": "validation_error", "detail": "invalid input", "errors": [{"field": "input.topic", "message": "…"}]}

DRF's own exceptions (validation, auth, throttling with its ``Retry-After`` header),
the domain errors the services raise, and what Django answers by itself under
``/api/`` (an unknown URL, a malformed request, a server error) all end here, so a
client parses one shape whatever went wrong.

Domain errors reach this module through a registry (``register``): each app says,
from its ``AppConfig.ready()``, which of its exceptions is which HTTP answer. The
errors of ``runs`` (below this layer) are registered here; ``api`` imports no app
above it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from runs.definitions import DefinitionError
from runs.models import IllegalTransition
from runs.services import NotFound, StartError

logger = logging.getLogger("stevora.api")

_FIELD_MESSAGE = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.+)$", re.S)

API_PREFIX = "/api/"


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "the request body is too large"
    default_code = "request_too_large"


def too_large() -> RequestTooLarge:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return RequestTooLarge(f"the request body is larger than {limit} bytes (STEVORA_API_MAX_BODY_BYTES)")


def body(kind: str, detail: str, errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"type": kind, "detail": detail, "errors": errors or []}


def pairs(errors: list[tuple[str, str]]) -> list[dict[str, str]]:
    """(path, message) pairs, as the services raise them, in the body's shape."""
    return [{"field": path, "message": message} for path, message in errors]


def field_error(message: str, fields: set[str] | None = None) -> list[dict[str, str]]:
    """``"field: message"`` (how single-message domain errors name their field) as one entry."""
    match = _FIELD_MESSAGE.match(message)
    if match and (fields is None or match.group(1) in fields):
        return [{"field": match.group(1), "message": match.group(2)}]
    return []


# --- the registry of domain errors ----------------------------------------------------

Converter = Callable[[Any], Response]
_converters: dict[type[BaseException], Converter] = {}


def register(exc_type: type[BaseException], converter: Converter) -> None:
    """Answer ``exc_type`` (and its subclasses, unless they have their own) with ``converter(exc)``."""
    _converters[exc_type] = converter


def simple(status_code: int, kind: str) -> Converter:
    """A converter for errors whose message is the detail and may name one field (``"name: …"``)."""
    def convert(exc: Any) -> Response:
        return Response(body(kind, str(exc), field_error(str(exc))), status_code)
    return convert


def _domain(exc: BaseException) -> Response | None:
    for klass in type(exc).__mro__:  # the most specific registration wins
        converter = _converters.get(klass)
        if converter is not None:
            return converter(exc)
    return None


def _definition_error(exc: DefinitionError) -> Response:
    # Paths are inside the document (``steps[1].handler``); the document itself is ``definition``.
    errors = [(path or "definition", message) for path, message in exc.errors]
    return Response(body("invalid_definition", "the workflow definition is invalid", pairs(errors)), 400)


def _start_error(exc: StartError) -> Response:
    return Response(body("invalid_input", str(exc).split("\n", 1)[0], pairs(exc.errors)), 400)


register(DefinitionError, _definition_error)
register(StartError, _start_error)
register(NotFound, lambda exc: Response(body("not_found", str(exc)), 404))
register(IllegalTransition, lambda exc: Response(body("conflict", str(exc)), 409))


# --- DRF's exception handler -------------------------------------------------------------

_KIND = {
    status.HTTP_400_BAD_REQUEST: "invalid_input",
    status.HTTP_401_UNAUTHORIZED: "not_authenticated",
    status.HTTP_403_FORBIDDEN: "permission_denied",
    status.HTTP_404_NOT_FOUND: "not_found",
    status.HTTP_405_METHOD_NOT_ALLOWED: "method_not_allowed",
    status.HTTP_406_NOT_ACCEPTABLE: "not_acceptable",
    status.HTTP_409_CONFLICT: "conflict",
    status.HTTP_413_REQUEST_ENTITY_TOO_LARGE: "request_too_large",
    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE: "unsupported_media_type",
    status.HTTP_429_TOO_MANY_REQUESTS: "throttled",
}


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


def handle(exc: Exception, context: dict[str, Any]) -> Response | None:
    domain = _domain(exc)
    if domain is not None:
        return domain
    if isinstance(exc, RequestDataTooBig):
        exc = too_large()
    elif isinstance(exc, SuspiciousOperation):
        exc = exceptions.ParseError(str(exc) or "malformed request")
    elif isinstance(exc, DjangoPermissionDenied) and str(exc):
        # The services explain a refusal ("bob lacks the permission …"); keep their words.
        exc = exceptions.PermissionDenied(str(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "not found")
    response = exception_handler(exc, context)
    if response is None:
        return None  # a bug: Django logs it with its traceback and ``server_error`` answers 500
    kind = _KIND.get(response.status_code, "error")
    if isinstance(exc, exceptions.ValidationError):
        response.data = body("invalid_input", "invalid input", _flatten(exc.detail))
    else:
        detail = getattr(exc, "detail", None)
        message = str(detail) if detail is not None and not isinstance(detail, (dict, list)) else kind
        wait = getattr(exc, "wait", None)
        if isinstance(exc, exceptions.Throttled) and wait is not None:
            message = f"rate limit exceeded; retry in {int(wait) + 1} seconds"
        errors = getattr(exc, "errors", None)  # a ParseError may name its field (see api.parsers)
        response.data = body(getattr(exc, "default_code", None) or kind, message, errors)
    return response


# --- Django's own answers under /api/ (handler400/404/500 in stevora_project.urls) ----------------


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """``handler400``: a request Django refused before any view (a body over the size limit, too many fields)."""
    if not _is_api(request):
        return defaults.bad_request(request, exception)  # type: ignore[arg-type]
    if isinstance(exception, RequestDataTooBig):
        return JsonResponse(body("request_too_large", str(too_large().detail)), status=413)
    return JsonResponse(body("invalid_input", str(exception) or "malformed request"), status=400)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """``handler403``."""
    if not _is_api(request):
        return defaults.permission_denied(request, exception)  # type: ignore[arg-type]
    return JsonResponse(body("permission_denied", str(exception) or "permission denied"), status=403)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """``handler404``: a URL under /api/ that matches no route gets the JSON error body too."""
    if not _is_api(request):
        return defaults.page_not_found(request, exception)
    return JsonResponse(body("not_found", f"no API endpoint at {request.path}"), status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    """``handler500``: a bug (logged with its traceback by Django), answered in the JSON body under /api/."""
    if not _is_api(request):
        return defaults.server_error(request)
    return JsonResponse(body("server_error", "internal server error; the traceback is in the server's log"),
                        status=500)
