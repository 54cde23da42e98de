"""Secrets from the environment: ``NAME``, or the contents of the file named by ``NAME_FILE``.

For handlers and providers (API keys are read when used, never stored in rows or logs)
and for the settings module. A ``NAME_FILE`` that cannot be read raises
``ImproperlyConfigured`` naming the variable.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured


def secret(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value is not None and value != "":
        return value
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {file_path!r}: {exc}") from exc
    return default
