"""The admin pages of providers, chains, circuit breakers, LLM calls and tool calls render,
and no page shows a key."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from providers.models import LLMCall, ProviderChain, ProviderHealth
from tests.support.llm_server import llm_server_fixture, llm_server_session_fixture, make_provider  # noqa: F401


@pytest.fixture
def admin_client(db: Any) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="root-pass-123"))
    return client


def test_every_providers_admin_page_renders_without_secrets(admin_client: Client, llm_server: Any,
                                                            monkeypatch: Any) -> None:
    monkeypatch.setenv("STEVORA_TEST_ADMIN_KEY", "sk-admin-secret-999")
    provider = make_provider(llm_server, "shown", api_key_env="STEVORA_TEST_ADMIN_KEY")
    ProviderChain.objects.create(name="main", providers=["shown"])
    ProviderHealth.objects.create(provider=provider, state="open", consecutive_failures=3)
    call = LLMCall.objects.create(provider=provider, provider_name="shown", kind=provider.kind, model="m",
                                  request={"headers": {"Authorization": "[redacted]"}})
    pages = [reverse(f"admin:providers_{name}_changelist") for name in
             ("provider", "providerchain", "providerhealth", "llmcall", "toolcall")]
    pages += [reverse("admin:providers_provider_change", args=[provider.pk]),
              reverse("admin:providers_llmcall_change", args=[call.pk])]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert b"sk-admin-secret-999" not in response.content


def test_the_reset_action_closes_a_circuit(admin_client: Client, llm_server: Any) -> None:
    provider = make_provider(llm_server, "tripped")
    ProviderHealth.objects.create(provider=provider, state="open", consecutive_failures=9)
    response = admin_client.post(reverse("admin:providers_provider_changelist"),
                                 {"action": "reset_circuit", "_selected_action": [provider.pk]}, follow=True)
    assert b"1 circuit(s) closed." in response.content
    health = ProviderHealth.objects.get(pk=provider.pk)
    assert health.state == "closed" and health.consecutive_failures == 0
