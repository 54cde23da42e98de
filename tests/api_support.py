"""Helpers for the API tests: users with permissions, clients carrying an API key."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Permission, User
from rest_framework.test import APIClient

from api.services import create_key
from runs.models import Workspace

SERVICE_PERMS = ["add_workflow", "add_run", "change_run", "add_event"]


def make_user(username: str, perms: list[str] | None = None) -> User:
    user = User.objects.create_user(username, password=f"{username}-pass-123")
    if perms:
        user.user_permissions.add(*Permission.objects.filter(codename__in=perms))
    return user


def client_for(user: User, workspace: Workspace | None = None, rate: str = "") -> APIClient:
    new = create_key(name=f"{user.username} test key", user=user, workspace=workspace or Workspace.default(),
                     rate=rate)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {new.plaintext}")
    client.key = new.key  # type: ignore[attr-defined]
    client.plaintext = new.plaintext  # type: ignore[attr-defined]
    return client


def other_workspace() -> Workspace:
    return Workspace.objects.get_or_create(slug="other", defaults={"name": "Other"})[0]


def three_steps(name: str = "api-three", ledger: str = "", **extra: Any) -> dict[str, Any]:
    """a -> b -> c, each appending to the ledger; c's output names the input topic."""
    def step(n: str) -> dict[str, Any]:
        return {"name": n, "type": "task", "handler": "test.ledger",
                "config": {"ledger": ledger, "value": f"{n}:{{{{ input.topic }}}}"}}

    return {"name": name, "input_schema": {"type": "object", "properties": {"topic": {"type": "string"}},
                                    "required": ["topic"]},
            "steps": [step("a"), step("b"), step("c")], **extra}


def approval_first(name: str = "api-approval", **approval: Any) -> dict[str, Any]:
    """The first step is an approval: start_run parks the run at once (no engine needed)."""
    return {"name": name, "steps": [
        {"name": "review", "type": "approval", "content": {"text": "{{ input.topic }}"}, **approval},
        {"name": "after", "type": "task", "handler": "test.value", "config": {"value": "done"}},
    ]}


def errors_by_field(response: Any) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"type", "detail", "errors"}, body
    return {e["field"]: e["message"] for e in body["errors"]}
