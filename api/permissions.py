"""The key carries its user's Django permissions: reads need a signed-in caller, changes a named permission."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request


class HasActionPermission(BasePermission):
    """Views list ``required_permissions = {"POST": ["runs.add_run"], …}``; reads need only authentication.

    Decisions are checked by ``approvals.services.decide`` itself (the same check as
    the admin button), so the decide view lists nothing here.
    """

    message = "this API key's user lacks the permission for this action"

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method in SAFE_METHODS:
            return True
        needed = getattr(view, "required_permissions", {}).get(request.method, [])
        missing = [perm for perm in needed if not user.has_perm(perm)]
        if missing:
            self.message = f"{user.get_username()} lacks the permission {', '.join(missing)}"
            return False
        return True
