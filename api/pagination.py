"""Cursor pagination: stable under inserts, no COUNT(*) over a large run table.

``page_size`` is strict: anything but an integer from 1 to the list's maximum is a
400 naming ``page_size`` (not silently the default), and the schema says the same.
A forged or stale cursor is a 404, as documented.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from django.db.models import QuerySet
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request


class StrictCursorPagination(CursorPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        limit = self.max_page_size
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9 and 1 <= int(raw) <= limit):
            raise ValidationError({self.page_size_query_param: [f"must be an integer from 1 to {limit}"]})
        return int(raw)

    def paginate_queryset(self, queryset: QuerySet[Any], request: Request, view: Any = None) -> list[Any] | None:
        try:
            return super().paginate_queryset(queryset, request, view)
        except (DjangoValidationError, ValueError, TypeError, OverflowError, DataError):
            # A well-formed cursor whose position is not a value of the ordering field (a forged one).
            raise NotFound(self.invalid_cursor_message) from None

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
                parameter["description"] = f"Results per page, 1 to {self.max_page_size} (default {self.page_size})."
            elif parameter["name"] == self.cursor_query_param:
                parameter["description"] = "The opaque cursor from a previous page's `next` or `previous` link."
        return parameters


class NewestFirst(StrictCursorPagination):
    ordering = ("-created_at", "-pk")


class OldestFirst(StrictCursorPagination):
    ordering = ("id",)
    page_size = 200
    max_page_size = 1000
