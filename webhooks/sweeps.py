"""The webhooks app's periodic sweep (run by the engine's sweeper, never from the step queue)."""

from __future__ import annotations

from django.conf import settings

from .delivery import sweep_due
from .notices import sweep_notices


def sweep() -> int:
    """Notices whose post-commit receiver never ran, then every due delivery (sent inline on
    the embedded engine, published as delivery tasks otherwise)."""
    sweep_notices()
    return sweep_due(inline=settings.IS_EMBEDDED_BROKER)
