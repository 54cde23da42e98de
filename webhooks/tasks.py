"""Celery task: one delivery attempt (the sweep of missed notices and due deliveries is ``sweeps.sweep``)."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

_INFRA_ERRORS = (OperationalError, InterfaceError)


@shared_task(name="webhooks.deliver", acks_late=True, ignore_result=True,
             autoretry_for=_INFRA_ERRORS, retry_backoff=True, retry_backoff_max=30, max_retries=5)
def deliver_task(delivery_id: str) -> None:
    from .delivery import deliver

    deliver(delivery_id)
