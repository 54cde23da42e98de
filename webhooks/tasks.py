"""Celery tasks: one delivery attempt, and the sweep of missed notices and due deliveries (beat)."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

_INFRA_ERRORS = (OperationalError, InterfaceError)


@shared_task(name="webhooks.deliver", acks_late=True, ignore_result=True,
             autoretry_for=_INFRA_ERRORS, retry_backoff=True, retry_backoff_max=30, max_retries=5)
def deliver_task(delivery_id: str) -> None:
    from .delivery import deliver

    deliver(delivery_id)


@shared_task(name="webhooks.sweep", ignore_result=True)
def sweep_task() -> int:
    """Notices whose post-commit receiver never ran, then every due delivery."""
    from .delivery import sweep_due
    from .notices import sweep_notices

    sweep_notices()
    return sweep_due()
