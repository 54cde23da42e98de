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


@app.on_after_configure.connect
def _drop_broken_connections(sender: Celery, **kwargs: object) -> None:
    """Connections are kept across tasks (CELERY_DB_REUSE_MAX), so Celery's Django fixup never
    closes one; after a PostgreSQL restart a pool process would fail every task on its dead
    connection until replaced. After each task, close the ones that broke (or outlived
    CONN_MAX_AGE); the next task opens a fresh one."""
    from celery.signals import task_postrun

    def close_broken(**_: object) -> None:
        from django.db import connections

        for conn in connections.all(initialized_only=True):
            conn.close_if_unusable_or_obsolete()

    task_postrun.connect(close_broken, weak=False)
