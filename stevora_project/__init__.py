"""Stevora project package: settings, the Celery app and URL routing only."""

from .celery import app as celery_app

__all__ = ["celery_app"]
