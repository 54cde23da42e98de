"""Configuring providers: a YAML file loaded by a command (all or nothing, errors naming the
field, keys refused), the OPENAI_API_KEY / ANTHROPIC_API_KEY defaults, named chains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from providers.models import Provider, ProviderChain
from providers.registry import ResolveError, api_key, resolve
from providers.wire import join_url
from runs.services import start_run
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    llm_workflow,
    make_provider,
    output_of,
)

GOOD = """
providers:
  - name: openai
    kind: openai
    model: gpt-4o-mini
    api_key_env: OPENAI_API_KEY
    input_price_per_mtok: 0.15
    output_price_per_mtok: 0.60
  - name: local
    kind: openai_compatible
    model: llama3.2
    base_url: http://127.0.0.1:11434/v1
    timeout_seconds: 120
chains:
  default: [openai, local]
"""


def test_a_yaml_file_creates_providers_and_chains_and_reloading_updates_them(db: Any, tmp_path: Path,
                                                                           capsys: Any) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(GOOD)
    call_command("load_providers", str(path))
    assert "providers created: openai, local" in capsys.readouterr().out
    assert Provider.objects.get(name="local").timeout_seconds == 120
    assert ProviderChain.objects.get(name="default").providers == ["openai", "local"]
    path.write_text(GOOD.replace("llama3.2", "qwen2.5"))
    call_command("load_providers", str(path))
    assert "updated: openai, local" in capsys.readouterr().out
    assert Provider.objects.get(name="local").model == "qwen2.5"


@pytest.mark.parametrize(("text", "message"), [
    ("providers:\n  - name: x\n    kind: openai\n    model: m\n    api_key: sk-123\n",
     "providers[0].api_key: keys are never stored"),
    ("providers:\n  - name: x\n    kind: martian\n    model: m\n", "providers[0].kind:"),
    ("providers:\n  - name: x\n    kind: openai_compatible\n    model: m\n",
     "providers[0].base_url: an OpenAI-compatible provider needs its server's base URL"),
    ("providers:\n  - name: ok\n    kind: openai\n    model: m\nchains:\n  main: [ok, ghost]\n",
     "chains[0].providers: no provider named ghost"),
    ("providers: [\n", "not valid YAML"),
    ("providers:\n  - name: x\n    kind: openai\n    model: m\n    options: {api_key: sk-123}\n",
     "providers[0].options: api_key: keys are never stored"),
])
def test_bad_configuration_is_refused_naming_the_field_and_nothing_is_written(db: Any, tmp_path: Path, text: str,
                                                                              message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CommandError) as info:
        call_command("load_providers", str(path))
    assert message in str(info.value)
    assert not Provider.objects.exists() and not ProviderChain.objects.exists()
    assert "sk-123" not in str(info.value)


def test_an_api_key_in_the_environment_means_a_provider_exists(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY_FILE", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-123")
    route = resolve({})
    assert [p.name for p in route.providers] == ["openai"]
    row = Provider.objects.get(name="openai")
    assert row.api_key_env == "OPENAI_API_KEY" and row.kind == "openai"
    assert api_key(row) == "sk-from-env-123"
    assert "sk-from-env" not in str(Provider.objects.values().get(name="openai"))


def test_nothing_configured_is_a_clear_error(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_API_KEY_FILE", "ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ResolveError, match="no provider configured"):
        resolve({})


def test_a_step_names_a_chain_defined_once(engine: Any, workflow: Any, llm_server: Any) -> None:
    make_provider(llm_server, "first", max_retries=0)
    make_provider(llm_server, "second")
    ProviderChain.objects.create(name="main", providers=["first", "second"])
    llm_server.script("first", {"status": 400, "message": "context too long"})
    llm_server.script("second", {"text": "from the chain"})
    workflow(llm_workflow("chained", chain="main"))
    run = wait_for_run(start_run("chained", {}).run.pk)
    assert output_of(run)["text"] == "from the chain"
    assert output_of(run)["route"][0]["reason"] == "HTTP 400: server_error: context too long"


def test_a_model_name_picks_the_providers_serving_it_and_overrides_the_first(db: Any, llm_server: Any) -> None:
    make_provider(llm_server, "a", model="shared", priority=2)
    make_provider(llm_server, "b", model="shared", priority=1)
    make_provider(llm_server, "c", model="other")
    assert [p.name for p in resolve({"model": "shared"}).providers] == ["b", "a"]
    route = resolve({"provider": "c", "model": "special", "fallback": ["a"]})
    assert [route.model_for(0), route.model_for(1)] == ["special", "shared"]


def test_base_urls_work_with_or_without_their_v1(db: Any) -> None:
    assert join_url("http://127.0.0.1:11434/v1", "/v1/chat/completions") == "http://127.0.0.1:11434/v1/chat/completions"
    assert join_url("http://127.0.0.1:11434", "/v1/chat/completions") == "http://127.0.0.1:11434/v1/chat/completions"
