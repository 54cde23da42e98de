"""Production settings: ``check --deploy`` is clean with the documented environment, and a
published or empty SECRET_KEY stops start-up. Each case is a real ``manage.py`` process."""

from __future__ import annotations

import os
import re
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

# The same in every backend: runs in the embedded pass only (bin/test).
pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parent.parent
# Only settings are read: nothing connects to this database or broker.
SERVERS = {"DATABASE_URL": "postgres://nobody@127.0.0.1:5432/not_used", "CELERY_BROKER_URL": "redis://127.0.0.1:6379/4"}


def documented_production_environment() -> dict[str, str]:
    """The example in docs/operations.md ("Production security settings"), read from the page."""
    page = (ROOT / "docs" / "operations.md").read_text()
    block = page.split("<!-- production-environment -->", 1)[1].split("```", 2)[1]
    env = {}
    for line in block.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            env[name] = value.strip().strip('"')
    env["SECRET_KEY"] = secrets.token_urlsafe(50)  # the page shows a placeholder
    return env


def manage(*args: str, var_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``manage.py`` with only what the case gives: no variable of this test run leaks in."""
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", ""), "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "stevora_project.settings", "STEVORA_VAR_DIR": str(var_dir)}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**base, **env}, timeout=120)


def test_check_deploy_is_clean_with_the_documented_production_environment(tmp_path: Path) -> None:
    env = documented_production_environment()
    assert {"SECURE_HSTS_SECONDS", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
            "SECURE_PROXY_SSL_HEADER"} <= set(env)
    result = manage("check", "--deploy", "--fail-level", "DEBUG", var_dir=tmp_path, **{**SERVERS, **env})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_without_those_settings_check_deploy_names_what_is_missing(tmp_path: Path) -> None:
    env = {**documented_production_environment(), **SERVERS}
    for name in ("SECURE_HSTS_SECONDS", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
        env.pop(name)
    env.pop("SECURE_HSTS_INCLUDE_SUBDOMAINS")
    env.pop("SECURE_HSTS_PRELOAD", None)
    result = manage("check", "--deploy", var_dir=tmp_path, **env)
    found = set(re.findall(r"security\.W0\d\d", result.stderr + result.stdout))
    assert found == {"security.W004", "security.W008", "security.W012", "security.W016"}


@pytest.mark.parametrize("value, expected", [
    ("change-me-in-production", "SECRET_KEY is a published default value"),
    ("stevora-insecure-dev-key-change-me", "SECRET_KEY is a published default value"),
    ("django-insecure-" + "x" * 50, "SECRET_KEY is a published default value"),
    ("", "SECRET_KEY is set but empty"),
    ("   ", "SECRET_KEY is set but empty"),
])
@pytest.mark.parametrize("mode", ["production", "embedded"])
def test_a_published_or_empty_secret_key_stops_start_up(tmp_path: Path, value: str, expected: str,
                                                        mode: str) -> None:
    env = {**documented_production_environment(), "SECRET_KEY": value}
    if mode == "production":
        env.update(SERVERS)
    result = manage("check", var_dir=tmp_path, **env)
    assert result.returncode != 0
    assert f"ImproperlyConfigured: {expected}" in result.stderr


def test_debug_on_accepts_a_development_key(tmp_path: Path) -> None:
    result = manage("shell", "-c", "from django.conf import settings; print(settings.SECRET_KEY)",
                    var_dir=tmp_path, DEBUG="true", SECRET_KEY="django-insecure-for-my-laptop")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "django-insecure-for-my-laptop"


def test_production_without_a_secret_key_stops_start_up(tmp_path: Path) -> None:
    env = documented_production_environment()
    del env["SECRET_KEY"]
    result = manage("check", var_dir=tmp_path, **{**SERVERS, **env})
    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is not set: with DATABASE_URL (production)" in result.stderr
    assert not (tmp_path / "secret_key").exists()


def test_embedded_without_a_secret_key_generates_one_and_keeps_it(tmp_path: Path) -> None:
    show = ("shell", "-c", "from django.conf import settings; print(settings.SECRET_KEY)")
    first = manage(*show, var_dir=tmp_path)
    assert first.returncode == 0, first.stderr
    key = first.stdout.strip().splitlines()[-1]
    stored = tmp_path / "secret_key"
    assert stored.read_text().strip() == key and len(key) >= 50
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    again = manage(*show, var_dir=tmp_path)
    assert again.stdout.strip().splitlines()[-1] == key  # the same key after a restart
    assert manage("check", "--deploy", var_dir=tmp_path).returncode == 0  # warnings only: it starts


@pytest.mark.parametrize("variable, value, expected", [
    ("SECURE_HSTS_SECONDS", "a year", "SECURE_HSTS_SECONDS must be an integer, got 'a year'"),
    ("SECURE_HSTS_SECONDS", "-1", "SECURE_HSTS_SECONDS must be at least 0"),
    ("SECURE_SSL_REDIRECT", "maybe", "SECURE_SSL_REDIRECT must be one of"),
    ("SESSION_COOKIE_SECURE", "sure", "SESSION_COOKIE_SECURE must be one of"),
    ("CSRF_COOKIE_SECURE", "2", "CSRF_COOKIE_SECURE must be one of"),
    ("SECURE_HSTS_INCLUDE_SUBDOMAINS", "all", "SECURE_HSTS_INCLUDE_SUBDOMAINS must be one of"),
    ("SECURE_PROXY_SSL_HEADER", "https", "SECURE_PROXY_SSL_HEADER must look like 'X-Forwarded-Proto: https'"),
    ("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto https", "SECURE_PROXY_SSL_HEADER must look like"),
])
def test_a_malformed_security_setting_stops_start_up_naming_it(tmp_path: Path, variable: str, value: str,
                                                                expected: str) -> None:
    env = {**documented_production_environment(), **SERVERS, variable: value}
    result = manage("check", var_dir=tmp_path, **env)
    assert result.returncode != 0 and expected in result.stderr


def test_hsts_preload_needs_a_year_and_subdomains(tmp_path: Path) -> None:
    env = {**documented_production_environment(), **SERVERS, "SECURE_HSTS_SECONDS": "3600",
           "SECURE_HSTS_PRELOAD": "true"}
    result = manage("check", var_dir=tmp_path, **env)
    assert result.returncode != 0 and "SECURE_HSTS_PRELOAD=true needs SECURE_HSTS_SECONDS" in result.stderr


def test_the_proxy_header_becomes_what_django_reads(tmp_path: Path) -> None:
    env = {**documented_production_environment(), **SERVERS}
    result = manage("shell", "-c", "from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)",
                    var_dir=tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "('HTTP_X_FORWARDED_PROTO', 'https')"


def test_compose_requires_a_secret_key_instead_of_defaulting_one() -> None:
    compose = (ROOT / "compose.yaml").read_text()
    assert "change-me-in-production" not in compose
    assert re.search(r"SECRET_KEY: \$\{SECRET_KEY:\?", compose)
