"""Query strings and URL paths under ``/api/`` carry no NUL character.

Django decodes ``%00`` into the text that views pass on to the database, and
PostgreSQL refuses NUL in text: ``?name=a%00b`` was a 500. Refused here, once for
every endpoint, as a 400 naming the parameter (the path as ``path``).
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from steps.jsonvalues import text_problem

from .errors import API_PREFIX, body


class RefuseUnstorableQuery:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(API_PREFIX):
            errors = []
            problem = text_problem(request.path)
            if problem:
                errors.append({"field": "path", "message": problem})
            for name, values in request.GET.lists():
                for value in [name, *values]:
                    problem = text_problem(value)
                    if problem:
                        errors.append({"field": name if text_problem(name) is None else "query", "message": problem})
                        break
            if errors:
                return JsonResponse(body("invalid_input", "invalid input", errors), status=400)
        return self.get_response(request)
