"""Celery tasks. Each carries a primary key only; the rows hold the truth."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError

from .executor import process_step

# Infrastructure hiccups (a dropped DB connection) are retried by Celery with a short
# backoff; step failures are retried by the step's own policy, recorded in its row.
_INFRA_ERRORS = (OperationalError, InterfaceError)


@shared_task(name="steps.run_step", acks_late=True, reject_on_worker_lost=True, ignore_result=True,
             autoretry_for=_INFRA_ERRORS, retry_backoff=True, retry_backoff_max=30, max_retries=5)
def run_step(step_id: int) -> None:
    process_step(int(step_id))


@shared_task(name="steps.wake_step", acks_late=True, ignore_result=True,
             autoretry_for=_INFRA_ERRORS, retry_backoff=True, retry_backoff_max=30, max_retries=5)
def wake_step(step_id: int) -> None:
    from runs.reconciler import wake_step as wake

    wake(int(step_id))


@shared_task(name="steps.reconcile", ignore_result=True)
def reconcile() -> dict[str, Any]:
    from runs.reconciler import sweep

    return sweep()
