"""People who decide approvals: creating a user with the right flags, groups and permissions.

``manage.py create_user`` is a thin door over :func:`create_user`; the compose bootstrap
(bin/bootstrap) uses it for the first superuser.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.contrib.auth.models import Group, Permission, User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from .services import DECIDE_PERMISSION

# What a reviewer needs besides deciding: to open the inbox and the run it belongs to.
REVIEWER_PERMISSIONS = (DECIDE_PERMISSION, "approvals.view_approval", "runs.view_run", "runs.view_runevent",
                        "steps.view_stepexecution")


class UserError(Exception):
    """Bad input for a new user; the message names what was wrong."""


@dataclass
class NewUser:
    user: User
    created_groups: list[str] = field(default_factory=list)


def create_user(username: str, *, password: str | None, superuser: bool = False, groups: Iterable[str] = (),
                can_decide: bool = False, email: str = "") -> NewUser:
    """Create ``username`` in one transaction. ``password`` None: no usable password (API keys
    only). Superusers and deciders are staff (they use the admin); groups are created if missing."""
    username = username.strip()
    if not username:
        raise UserError("the username is empty")
    try:
        User.username_validator(username)
    except ValidationError as exc:
        raise UserError(f"username {username!r}: {' '.join(exc.messages)}") from None
    if len(username) > User._meta.get_field("username").max_length:  # type: ignore[operator]
        raise UserError(f"username {username!r} is longer than 150 characters")
    group_names = [g.strip() for g in groups]
    if any(not g for g in group_names):
        raise UserError("--group: a group name is empty")
    if password is not None:
        if not password:
            raise UserError("the password is empty")
        try:
            validate_password(password, User(username=username, email=email))
        except ValidationError as exc:
            raise UserError(f"password: {' '.join(exc.messages)}") from None
    with transaction.atomic():
        if User.objects.filter(username=username).exists():
            raise UserError(f"a user named {username!r} exists already")
        user = User.objects.create_user(username, email=email or "", password=password)
        if superuser or can_decide:
            user.is_staff = True
            user.is_superuser = superuser
            user.save(update_fields=["is_staff", "is_superuser"])
        created = []
        for name in group_names:
            group, was_created = Group.objects.get_or_create(name=name)
            if was_created:
                created.append(name)
            user.groups.add(group)
        if can_decide:
            user.user_permissions.add(*_permissions(REVIEWER_PERMISSIONS))
    return NewUser(user=user, created_groups=created)


def _permissions(names: Iterable[str]) -> list[Permission]:
    wanted = [tuple(name.split(".", 1)) for name in names]
    found = {(p.content_type.app_label, p.codename): p
             for p in Permission.objects.select_related("content_type")
             .filter(codename__in=[codename for _, codename in wanted])}
    missing = [f"{app}.{codename}" for app, codename in wanted if (app, codename) not in found]
    if missing:  # permissions are created by migrate
        raise UserError(f"permissions missing (has migrate run?): {', '.join(missing)}")
    return [found[key] for key in wanted]  # type: ignore[index]
