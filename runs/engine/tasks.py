"""Celery tasks. Each carries a primary key only; the rows hold the truth.

The reconciler is not a task: it runs in its own thread of beat (or of ``runengine``),
so it never waits in the step queue behind a backlog (``sweeper``).
"""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError, connections

from .dispatch import RUN_STEP, WAKE_STEP
from .executor import process_step
from .recovery import wake_step as wake

# Infrastructure hiccups (a dropped DB connection, a database restarting) are retried by
# Celery every second for half a minute — a doorbell is cheap and the claim makes repeats
# harmless, while a growing backoff left steps idle for seconds after the database was back;
# the reconciler re-rings past that. Step failures are retried by the step's own policy.
_INFRA_ERRORS = (OperationalError, InterfaceError)


@shared_task(name=RUN_STEP, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
             autoretry_for=_INFRA_ERRORS, retry_backoff=False, default_retry_delay=1, max_retries=30)
def run_step(step_id: int) -> None:
    try:
        process_step(int(step_id))
    except _INFRA_ERRORS:
        # Most often a connection that broke while this process was idle (a PostgreSQL
        # restart): once more at once on a fresh one, rather than after Celery's backoff. The
        # claim makes a second call harmless if the first got further than it seems.
        for conn in connections.all(initialized_only=True):
            conn.close_if_unusable_or_obsolete()
        process_step(int(step_id))


@shared_task(name=WAKE_STEP, acks_late=True, ignore_result=True,
             autoretry_for=_INFRA_ERRORS, retry_backoff=False, default_retry_delay=1, max_retries=30)
def wake_step(step_id: int) -> None:
    wake(int(step_id))
