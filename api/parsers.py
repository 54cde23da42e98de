"""The API's only body parser: JSON, bounded in size, refused whole when a value cannot be stored.

Every body is checked here, before any view runs, with the same rules the services
apply (``steps.jsonvalues``): no NUL characters or lone surrogates in any string or
key, no nesting deeper than ``MAX_DEPTH``, no integers beyond 64 bits. A refusal is
a 400 naming the field (``input.notes``); a body over
``settings.DATA_UPLOAD_MAX_MEMORY_SIZE`` (``STEVORA_API_MAX_BODY_BYTES``) is a 413,
decided from ``Content-Length`` or, without one, after reading one byte past the limit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError, ValidationError

from steps.jsonvalues import MAX_DEPTH, json_problems

from .errors import too_large


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _too_deep_at(text: str, max_depth: int = MAX_DEPTH) -> str:
    """The path of the first container nested deeper than ``max_depth``, found by scanning the text.

    Python's parser gives up with ``RecursionError`` (no position) on very deep
    documents; this scan keeps only the open containers, so it names the field as
    ``json_problems`` would (``payload.a.a``) whatever the depth.
    """
    stack: list[list[Any]] = []  # [kind, current key or index]
    last_string: Any = None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            try:
                last_string = json.loads(text[i:j + 1])
            except ValueError:
                last_string = text[i + 1:j]
            i = j + 1
            continue
        if c == ":" and stack and stack[-1][0] == "{":
            stack[-1][1] = last_string
        elif c == "," and stack and stack[-1][0] == "[":
            stack[-1][1] += 1
        elif c in "{[":
            stack.append([c, None if c == "{" else 0])
            if len(stack) > max_depth:
                path = ""
                for _, key in stack[:-1]:
                    path = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
                return path or "body"
        elif c in "}]" and stack:
            stack.pop()
        i += 1
    return "body"


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        context = parser_context or {}
        limit: int | None = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = context.get("request")
        if limit is not None:
            try:
                declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
            except ValueError:
                declared = 0
            if declared > limit:
                raise too_large()
            raw = stream.read(limit + 1)
            if len(raw) > limit:
                raise too_large()
        else:
            raw = stream.read()
        try:
            text = raw.decode(context.get("encoding", settings.DEFAULT_CHARSET))
        except (UnicodeDecodeError, LookupError) as exc:
            raise ParseError(f"JSON parse error - the body is not valid text: {exc}") from None
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            raise ValidationError({_too_deep_at(text): [f"nests deeper than {MAX_DEPTH} levels"]}) from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        problems = json_problems(data)
        if problems:
            errors: dict[str, list[str]] = {}
            for path, message in problems:
                errors.setdefault(path or "body", []).append(message)
            raise ValidationError(errors)
        return data
