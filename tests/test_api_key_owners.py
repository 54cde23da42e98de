"""Who may create an API key for whom, in every door that creates keys; the secret is shown once.

Personas: alice is staff with ``api.add_apikey`` (keys for herself only), carol also holds
``api.add_apikey_for_others`` (keys for anyone but a superuser), root is a superuser,
bob is an ordinary user keys may be made for.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client

from api.models import ApiKey, split_key
from api.services import ApiKeyError, create_key
from runs.models import Workspace


def _staff(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password=f"{username}-pass-123", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="api", codename__in=codenames))
    return User.objects.get(pk=user.pk)  # a fresh object: no stale permission cache


@pytest.fixture
def people(db: Any) -> dict[str, User]:
    return {
        "alice": _staff("alice", "add_apikey", "view_apikey"),
        "carol": _staff("carol", "add_apikey", "view_apikey", "add_apikey_for_others"),
        "root": User.objects.create_superuser("root", password="root-pass-123"),
        "bob": User.objects.create_user("bob"),
    }


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _add(client: Client, owner: User) -> Any:
    return client.post("/admin/api/apikey/add/", {"name": "svc", "workspace": Workspace.default().pk,
                                                  "user": owner.pk, "rate": ""})


def _shown_key(response: Any) -> str:
    match = re.search(r'id="api-key-plaintext"[^>]*>([^<]+)<', response.content.decode())
    assert match, "the created page shows no key"
    return match.group(1)


@pytest.mark.parametrize("actor, owner", [("alice", "alice"), ("carol", "carol"), ("carol", "bob"),
                                          ("carol", "alice"), ("root", "bob"), ("root", "root"),
                                          ("root", "alice")])
def test_allowed_owners_get_a_key_shown_once(people: dict[str, User], actor: str, owner: str) -> None:
    client = _client(people[actor])
    response = _add(client, people[owner])
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    plaintext = _shown_key(response)
    key = ApiKey.objects.get()
    assert key.user == people[owner]
    prefix_and_secret = split_key(plaintext)
    assert prefix_and_secret is not None and prefix_and_secret[0] == key.prefix
    assert key.matches(prefix_and_secret[1])
    # Nowhere else: not in a message for the next page, not in the session, not on the key's page.
    for page in ("/admin/api/apikey/", f"/admin/api/apikey/{key.pk}/change/", "/admin/"):
        assert prefix_and_secret[1] not in client.get(page).content.decode()
    assert prefix_and_secret[1] not in str(dict(client.session.items()))


@pytest.mark.parametrize("actor, owner, reason", [
    ("alice", "bob", "you may create keys only for yourself"),
    ("alice", "root", "only a superuser may create a key for the superuser root"),
    ("alice", "carol", "you may create keys only for yourself"),
    ("carol", "root", "only a superuser may create a key for the superuser root"),
])
def test_the_admin_refuses_a_key_for_someone_you_may_not_create_one_for(people: dict[str, User], actor: str,
                                                                       owner: str, reason: str) -> None:
    response = _add(_client(people[actor]), people[owner])
    assert response.status_code == 200
    page = response.content.decode()
    # The owner list offers only allowed owners, so the form refuses the choice itself.
    assert "Select a valid choice" in page or reason in page
    assert 'id="api-key-plaintext"' not in page
    assert ApiKey.objects.count() == 0


@pytest.mark.parametrize("actor, offered", [("alice", {"alice"}), ("carol", {"alice", "bob", "carol"}),
                                            ("root", {"alice", "bob", "carol", "root"})])
def test_the_add_form_offers_only_the_owners_you_may_choose(people: dict[str, User], actor: str,
                                                           offered: set[str]) -> None:
    form = _client(people[actor]).get("/admin/api/apikey/add/").context["adminform"].form
    assert {u.username for u in form.fields["user"].queryset} == offered
    assert form.fields["user"].initial == people[actor].pk


@pytest.mark.parametrize("actor, owner, reason", [
    ("alice", "bob", "user: you may create keys only for yourself (alice); a key for bob needs the "
                     "'Can create API keys for other users' permission"),
    ("alice", "root", "user: only a superuser may create a key for the superuser root"),
    ("carol", "root", "user: only a superuser may create a key for the superuser root"),
    ("bob", "bob", "user: you may not create API keys"),
])
def test_the_service_refuses_the_same_owners(people: dict[str, User], actor: str, owner: str, reason: str) -> None:
    with pytest.raises(ApiKeyError) as refused:
        create_key(name="x", user=people[owner], actor=people[actor])
    assert str(refused.value) == reason
    assert ApiKey.objects.count() == 0


def test_the_service_allows_what_the_admin_allows(people: dict[str, User]) -> None:
    assert create_key(name="a", user="alice", actor=people["alice"]).key.user == people["alice"]
    assert create_key(name="b", user=people["bob"], actor=people["carol"]).key.user == people["bob"]
    assert create_key(name="c", user=people["root"], actor=people["root"]).key.user == people["root"]


def test_the_command_is_the_operators_door_and_prints_the_key_once(people: dict[str, User], capsys: Any) -> None:
    # Whoever runs manage.py can read the database and create superusers: no actor to check.
    call_command("create_api_key", "--user", "root", "--name", "ops")
    out, err = capsys.readouterr()
    key = ApiKey.objects.get()
    assert out.strip().startswith(f"stv_{key.prefix}_") and out.count("stv_") == 1
    assert "will not be shown again" in err and out.strip() not in err
