"""The baseline: a plain Celery app (no Django, no database) whose chain of no-op tasks
the engine is compared with. Same broker, same reliability options as Stevora's step
task (acks_late, reject_on_worker_lost, prefetch 1, JSON, no results), prefork pool.

Workers: ``celery -A bench.raw_chain worker -P prefork -c 1 -Q $BENCH_RAW_QUEUE``.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery
from celery.signals import worker_ready

BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/7")
QUEUE = os.environ.get("BENCH_RAW_QUEUE", "bench-raw")
DONE_KEY = f"{QUEUE}:done"

# Not the current app: the driver also publishes Stevora's shared tasks, which resolve
# through the current app (and would land on this app's queue).
app = Celery("bench_raw", broker=BROKER, set_as_current=False)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_backend=None,
    task_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    broker_transport_options={"visibility_timeout": 4200},
)

_redis: redis.Redis | None = None


@app.task(name="bench.raw.noop", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def noop() -> None:
    return None


@app.task(name="bench.raw.done", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def done(token: str) -> None:
    """The chain's last no-op task; it records when the chain finished (one Redis RPUSH)."""
    global _redis
    finished = time.time()
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER)
    _redis.rpush(DONE_KEY, f"{token} {finished:.6f}")


@worker_ready.connect
def _touch_ready_file(**_: object) -> None:
    ready_file = os.environ.get("STEVORA_READY_FILE")
    if ready_file:
        with open(ready_file, "w") as fh:
            fh.write(str(os.getpid()))
