"""Security settings read from the environment: SECRET_KEY, HTTPS and cookies.

``SECRET_KEY`` signs sessions, CSRF tokens and password-reset links, so a published
value (compose.yaml's old default, Django's ``django-insecure-`` keys) lets anyone
forge them. With DEBUG off such a key, or an explicitly empty one, stops start-up.
When it is not set at all:

- embedded (SQLite, one machine): a random key is generated once and kept in
  ``$STEVORA_VAR_DIR/secret_key`` (mode 0600), so sessions survive restarts and every
  process on the machine (web, ``runengine``, commands) shares it;
- production (``DATABASE_URL`` names a server database) with DEBUG off: start-up stops,
  because each machine would invent its own key.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from .env import env_int, env_str

# Values that have been published as defaults: refused with DEBUG off.
KNOWN_DEFAULT_KEYS = frozenset({"change-me-in-production", "stevora-insecure-dev-key-change-me"})
INSECURE_PREFIX = "django-insecure-"
KEY_FILE_NAME = "secret_key"
_HSTS_PRELOAD_MINIMUM = 31536000  # hstspreload.org: at least a year, with includeSubDomains


def secret_key(*, debug: bool, embedded: bool, var_dir: Path) -> str:
    value = env_str("SECRET_KEY") or env_str("DJANGO_SECRET_KEY")
    explicitly_empty = value is None and any(name in os.environ for name in ("SECRET_KEY", "DJANGO_SECRET_KEY"))
    if value is not None and value.strip() == "":
        explicitly_empty, value = True, None
    if value is not None:
        if not debug and (value in KNOWN_DEFAULT_KEYS or value.startswith(INSECURE_PREFIX)):
            raise ImproperlyConfigured(
                "SECRET_KEY is a published default value; set SECRET_KEY (or SECRET_KEY_FILE) to a long random "
                "string, e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))'")
        return value
    if explicitly_empty and not debug:
        raise ImproperlyConfigured("SECRET_KEY is set but empty; set it to a long random string, or unset it in "
                                   "the embedded mode to have one generated under STEVORA_VAR_DIR")
    if embedded or debug:
        return _persisted_key(var_dir)
    raise ImproperlyConfigured(
        "SECRET_KEY is not set: with DATABASE_URL (production) and DEBUG off every machine needs the same key; "
        "set SECRET_KEY or SECRET_KEY_FILE (see docs/operations.md)")


def _persisted_key(var_dir: Path) -> str:
    """The machine's generated key: created once, atomically (two processes starting together agree)."""
    path = var_dir / KEY_FILE_NAME
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    var_dir.mkdir(parents=True, exist_ok=True)
    temporary = var_dir / f".{KEY_FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50) + "\n")
        try:
            os.link(temporary, path)  # fails if another process got there first: use theirs
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> str:
    key = path.read_text().strip()
    if not key:
        raise ImproperlyConfigured(f"SECRET_KEY: the generated key file {path} is empty; delete it to make a new one")
    return key


def hsts_seconds() -> int:
    return env_int("SECURE_HSTS_SECONDS", 0, minimum=0)


def check_hsts_preload(preload: bool, seconds: int, include_subdomains: bool) -> None:
    if preload and (seconds < _HSTS_PRELOAD_MINIMUM or not include_subdomains):
        raise ImproperlyConfigured(
            f"SECURE_HSTS_PRELOAD=true needs SECURE_HSTS_SECONDS of at least {_HSTS_PRELOAD_MINIMUM} and "
            "SECURE_HSTS_INCLUDE_SUBDOMAINS=true (what browsers' preload lists require)")


_HEADER = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9-]*)\s*:\s*(?P<value>\S+)$")


def proxy_ssl_header() -> tuple[str, str] | None:
    """``SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto: https"`` -> Django's ``("HTTP_X_FORWARDED_PROTO", "https")``.

    Set it only behind a proxy that always sets (or strips) that header itself.
    """
    raw = env_str("SECURE_PROXY_SSL_HEADER")
    if raw is None:
        return None
    match = _HEADER.match(raw.strip())
    if match is None:
        raise ImproperlyConfigured(
            f"SECURE_PROXY_SSL_HEADER must look like 'X-Forwarded-Proto: https', got {raw!r}")
    return "HTTP_" + match["name"].upper().replace("-", "_"), match["value"]
