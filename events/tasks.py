"""Celery tasks of the events app: the periodic purge of expired events (beat)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="events.purge", ignore_result=True)
def purge_task() -> int:
    from .services import purge_expired_events

    return purge_expired_events()
