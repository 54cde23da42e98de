"""The Celery app. Steps are dispatched as tasks carrying a primary key only."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stevora_project.settings")

app = Celery("stevora_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["steps"])
