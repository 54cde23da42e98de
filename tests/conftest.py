"""Fixtures: real engines (Celery workers on PostgreSQL + Redis, or runengine embedded).

The suite runs twice in CI: with DATABASE_URL/CELERY_BROKER_URL pointing at the
machine's PostgreSQL and Redis, and with neither set (embedded: SQLite + the
in-memory broker inside a ``runengine`` subprocess). Tests that need an engine take
the ``engine`` fixture and work the same on both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, Permission, User

from runs.models import Run, RunStatus
from runs.services import load_workflow
from tests.support.workers import Proc, celery_worker, engine_process, wait_until

EMBEDDED = settings.IS_EMBEDDED_BROKER


def _flush_again_on_deadlock() -> None:
    """Between transactional tests pytest-django empties every table with one TRUNCATE; on
    PostgreSQL it can deadlock with a sweep of the shared engine still reading two of them
    (seen in CI). The sweep's side gives way in a moment: flush again, a few times."""
    from django.core.management.base import CommandError
    from django.test import TransactionTestCase

    teardown = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]

    def retrying(self: TransactionTestCase) -> None:
        for attempt in range(3):
            try:
                return teardown(self)
            except CommandError as exc:
                if attempt == 2 or "deadlock" not in str(exc.__cause__ or exc).lower():
                    raise
                time.sleep(0.5)

    TransactionTestCase._fixture_teardown = retrying  # type: ignore[attr-defined]


_flush_again_on_deadlock()
AMQP = settings.IS_AMQP_BROKER  # RabbitMQ: bin/test runs the broker-dependent tests on it too


def pytest_report_header(config: Any) -> str:
    from django.db import connection

    return f"stevora: database={connection.vendor} broker={'embedded' if EMBEDDED else settings.CELERY_BROKER_URL}"


def make_engine(**env: str) -> Proc:
    return engine_process(**env) if EMBEDDED else celery_worker(env=env)


def purge_queue() -> None:
    """Empty this session's queue, and forget the messages that workers SIGKILLed by a test
    had reserved (Redis would hand them out again only after its visibility timeout, an
    hour). Called when none of this session's workers is running."""
    if EMBEDDED:
        return
    import redis

    from stevora_project.celery import app

    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    if AMQP:
        # RabbitMQ gave a killed worker's messages back when its connection closed.
        with app.connection_for_write() as conn:
            channel: Any = conn.channel()
            try:
                channel.queue_purge(queue)
            except Exception as exc:  # not declared yet (no worker has started): nothing to purge
                if getattr(exc, "code", None) != 404:
                    raise
            finally:
                channel.close()
        return
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)  # type: ignore[attr-defined]
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for tag in reserved_tags(client, queue):
        client.hdel("unacked", tag)
        client.zrem("unacked_index", tag)


def queue_length(client: Any, queue: str) -> int:
    """Messages waiting in ``queue`` on Redis, over kombu's priority lists (``queue`` holds
    priority 0, ``queue\x06\x16N`` priority N; steps are published at 3, run priorities
    at 1..9: settings' ``priority_steps``)."""
    keys = [queue] + [f"{queue}\x06\x16{p}" for p in range(1, 10)]
    return sum(int(client.llen(key)) for key in keys)


def reserved_tags(client: Any, queue: str) -> list[bytes]:
    """Delivery tags of the messages reserved from ``queue`` and not acknowledged yet
    (kombu's Redis transport keeps them in the ``unacked`` hash)."""
    import json

    tags = []
    for tag, raw in client.hgetall("unacked").items():
        try:
            _, _, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if routing_key == queue:
            tags.append(tag)
    return tags


@pytest.fixture(scope="session")
def _session_engine(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Proc]:
    with django_db_blocker.unblock():
        purge_queue()
    proc = make_engine().start()
    yield proc
    proc.stop()
    with django_db_blocker.unblock():
        _close_other_sessions()


def _close_other_sessions() -> None:
    """Worker processes this session started may still be on their way out (a pool child
    outlives its SIGTERMed parent by a moment): end their PostgreSQL sessions, so the test
    database can be dropped."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture
def engine(_session_engine: Proc, transactional_db: Any) -> Iterator[Proc]:
    """A running engine shared by the session (started again if a test killed or stopped it)."""
    if not _session_engine.alive():
        purge_queue()
        _session_engine.start()
    yield _session_engine


@pytest.fixture
def fresh_engine(transactional_db: Any, _session_engine: Proc) -> Iterator[Any]:
    """Engines a test owns (to kill); the shared one is stopped meanwhile, and started again
    only when a later test asks for ``engine`` (the tests are ordered so that those come
    first: see ``pytest_collection_modifyitems``)."""
    if _session_engine.alive():
        _session_engine.stop()
    purge_queue()
    started: list[Proc] = []

    def start(**env: str) -> Proc:
        proc = make_engine(**env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
    purge_queue()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests without an engine first, then those sharing the session's engine, then those
    starting their own: a worker process starts the shared engine once instead of stopping
    and starting it around every test that owns engines (each start is a Django process
    start, ~2 s of CPU). The order within each group is the files' order."""

    def group(item: pytest.Item) -> int:
        names = getattr(item, "fixturenames", ())
        return 2 if "fresh_engine" in names else 1 if "engine" in names else 0

    items.sort(key=group)


@pytest.fixture
def workflow(db: Any) -> Any:
    """Load a definition (a dict) and return its Workflow row."""

    def load(document: dict[str, Any]) -> Any:
        return load_workflow(document).workflow

    return load


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.txt"
    path.touch()
    return path


def read_ledger(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def wait_for_run(run_id: Any, statuses: tuple[str, ...] = (RunStatus.COMPLETED, RunStatus.FAILED,
                                                             RunStatus.CANCELLED),
                 timeout: float = 30.0) -> Run:
    def done() -> Run | None:
        run = Run.objects.get(pk=run_id)
        return run if run.status in statuses else None

    try:
        return wait_until(done, timeout=timeout, message=f"run {run_id} to reach {statuses}")
    except AssertionError:
        run = Run.objects.get(pk=run_id)
        steps = list(run.steps.values_list("key", "status", "attempt"))
        raise AssertionError(f"run {run_id} is {run.status} after {timeout}s; steps={steps}") from None


@pytest.fixture
def alice(db: Any) -> User:
    """A reviewer: staff, may decide approvals (in the 'reviewers' group)."""
    user = User.objects.create_user("alice", password="alice-pass-123", is_staff=True)
    group, _ = Group.objects.get_or_create(name="reviewers")
    user.groups.add(group)
    perms = Permission.objects.filter(
        codename__in=["decide_approval", "view_approval", "view_run", "view_stepexecution"])
    user.user_permissions.add(*perms)
    return user


@pytest.fixture
def bob(db: Any) -> User:
    """Staff without the decide permission."""
    user = User.objects.create_user("bob", password="bob-pass-123", is_staff=True)
    perms = Permission.objects.filter(codename__in=["view_approval", "view_run"])
    user.user_permissions.add(*perms)
    return user


def sleep_briefly(seconds: float = 0.2) -> None:
    time.sleep(seconds)


os.environ.setdefault("STEVORA_TEST", "1")
