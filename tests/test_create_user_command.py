"""``manage.py create_user``: superusers, reviewers who may decide approvals, groups; the
password from an environment variable; every bad input refused by name, nothing half-made."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from approvals.services import DECIDE_PERMISSION


def create(*args: str, **options: Any) -> str:
    out = io.StringIO()
    call_command("create_user", *args, stdout=out, stderr=io.StringIO(), **options)
    return out.getvalue()


def test_a_reviewer_made_by_the_command_can_sign_in_and_open_the_approval_inbox(
        db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVIEWER_PASSWORD", "a-long-enough-secret")
    said = create("rita", "--can-decide", "--group", "editors", "--group", "legal",
                  password_from_env="REVIEWER_PASSWORD")

    assert said.strip() == "created reviewer (can decide approvals) 'rita' in editors, legal"
    rita = User.objects.get(username="rita")
    assert rita.is_staff and not rita.is_superuser and rita.has_perm(DECIDE_PERMISSION)
    assert sorted(rita.groups.values_list("name", flat=True)) == ["editors", "legal"]
    client = Client()
    assert client.login(username="rita", password="a-long-enough-secret")
    assert client.get("/admin/approvals/approval/").status_code == 200


def test_a_superuser_and_a_plain_user(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_PASSWORD", "another-long-secret")
    assert create("root2", "--superuser", password_from_env="ADMIN_PASSWORD").strip() == "created superuser 'root2'"
    admin = User.objects.get(username="root2")
    assert admin.is_superuser and admin.is_staff and admin.check_password("another-long-secret")

    assert create("robot", no_password=True).strip() == "created user 'robot'"
    robot = User.objects.get(username="robot")
    assert not robot.is_staff and not robot.has_usable_password() and not robot.has_perm(DECIDE_PERMISSION)


def test_exists_ok_leaves_an_existing_user_as_it_is(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW", "first-long-password")
    create("ann", "--superuser", password_from_env="PW")
    monkeypatch.setenv("PW", "second-long-password")
    assert "exists already; left as it is" in create("ann", "--superuser", "--exists-ok", password_from_env="PW")
    assert User.objects.get(username="ann").check_password("first-long-password")
    with pytest.raises(CommandError, match="a user named 'ann' exists already"):
        create("ann", password_from_env="PW")


@pytest.mark.parametrize(("args", "options", "message"), [
    (["bob"], {"password_from_env": "UNSET_VARIABLE_FOR_TEST"},
     "--password-from-env: the environment variable UNSET_VARIABLE_FOR_TEST is not set or empty"),
    (["bob"], {"password_from_env": "SHORT_PW"}, "password: This password is too short"),
    (["bad name!"], {"no_password": True}, "username 'bad name!': Enter a valid username"),
    (["bob", "--group", " "], {"no_password": True}, "--group: a group name is empty"),
    (["bob"], {}, "no password: pass --password-from-env VAR, or --no-password, or run in a terminal"),
])
def test_bad_input_is_refused_by_name_and_nothing_is_created(
        db: Any, monkeypatch: pytest.MonkeyPatch, args: list[str], options: dict[str, Any], message: str) -> None:
    monkeypatch.delenv("UNSET_VARIABLE_FOR_TEST", raising=False)
    monkeypatch.setenv("SHORT_PW", "abc")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal: no prompt
    with pytest.raises(CommandError) as raised:
        create(*args, **options)
    assert message in str(raised.value)
    assert not User.objects.exists() and not Group.objects.exists()
