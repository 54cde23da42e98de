"""The Celery app. Steps are dispatched as tasks carrying a primary key only."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stevora_project.settings")

app = Celery("stevora_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["runs.engine"])


@app.on_after_configure.connect
def _ready_file_hook(sender: Celery, **kwargs: object) -> None:
    """Test harnesses and benchmarks wait for STEVORA_READY_FILE to appear once the worker
    consumes (or beat has started)."""
    from celery.signals import beat_init, worker_ready

    ready_file = os.environ.get("STEVORA_READY_FILE")
    if not ready_file:
        return

    def touch(**_: object) -> None:
        with open(ready_file, "w") as fh:
            fh.write(str(os.getpid()))

    worker_ready.connect(touch, weak=False)
    beat_init.connect(touch, weak=False)
