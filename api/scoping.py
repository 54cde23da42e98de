"""Every query is scoped to the caller's workspace: another workspace's object is a 404."""

from __future__ import annotations

from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.db import DataError
from django.db.models import Model, QuerySet
from rest_framework.exceptions import NotFound
from rest_framework.request import Request

from runs.models import Workspace

from .models import ApiKey

M = TypeVar("M", bound=Model)


def workspace_of(request: Request) -> Workspace:
    """The key's workspace; a browser session works in the default workspace."""
    cached: Workspace | None = getattr(request, "_stevora_workspace", None)
    if cached is not None:
        return cached
    auth = getattr(request, "auth", None)
    workspace = auth.workspace if isinstance(auth, ApiKey) else Workspace.default()
    request._stevora_workspace = workspace  # type: ignore[attr-defined]
    return workspace


def scoped(request: Request, queryset: QuerySet[M], field: str = "workspace") -> QuerySet[M]:
    return queryset.filter(**{field: workspace_of(request)})


def get_scoped(request: Request, queryset: QuerySet[M], what: str, field: str = "workspace", **lookup: Any) -> M:
    """One object of the caller's workspace, or 404 (also for malformed ids)."""
    try:
        obj = scoped(request, queryset, field).filter(**lookup).first()
    except (ValueError, TypeError, OverflowError, DataError, ValidationError):  # a malformed id is a miss
        obj = None
    if obj is None:
        raise NotFound(f"no {what} {next(iter(lookup.values()), '')!s}".rstrip())
    return obj
