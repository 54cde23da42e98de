"""Webhooks: signed deliveries recorded as rows, retried with backoff, sent by the engine's workers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from approvals.models import Approval
from runs.models import Workspace
from runs.services import load_workflow, start_run
from tests.api_support import approval_first, three_steps
from tests.conftest import EMBEDDED, wait_for_run
from tests.support.workers import wait_until
from webhooks.delivery import deliver
from webhooks.models import DeliveryStatus, EventType, WebhookDelivery, WebhookSubscription
from webhooks.signing import signature, verify

SECRET = "whsec_test-secret"


class Receiver:
    """An HTTP server on 127.0.0.1 that records requests and answers from a script of status codes."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                code = receiver.script.pop(0) if receiver.script else 200
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"ok" if code < 300 else b"try later")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


LATER = timedelta(days=1)


def scheduled_later(url: str, event: str = "run.completed", data: Any = None, sub: Any = None,
                    max_attempts: int = 8) -> WebhookDelivery:
    """A delivery due tomorrow: the session engine's workers and sweep leave it alone; the test
    sends it with ``deliver(id, due_by=far())``."""
    delivery = WebhookDelivery(workspace=Workspace.default(), subscription=sub, url=url, event=event,
                               max_attempts=max_attempts, next_attempt_at=timezone.now() + LATER, payload={})
    delivery.payload = {"id": str(delivery.id), "type": event, "created_at": timezone.now().isoformat(),
                        "data": data or {}}
    delivery.save(force_insert=True)
    return delivery


def far() -> Any:
    return timezone.now() + 2 * LATER


def postpone(delivery: WebhookDelivery) -> None:
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() + LATER)


def due_in(delivery: WebhookDelivery) -> timedelta:
    assert delivery.next_attempt_at is not None
    return delivery.next_attempt_at - timezone.now()


def allow_private(**extra: Any) -> Any:
    return override_settings(STEVORA={**settings.STEVORA, "HTTP_ALLOW_PRIVATE": True, **extra})


def check_signature(request: dict[str, Any], secret: str = SECRET) -> dict[str, Any]:
    headers = request["headers"]
    assert verify(secret, headers["X-Stevora-Timestamp"], request["body"], headers["X-Stevora-Signature"])
    assert not verify("wrong", headers["X-Stevora-Timestamp"], request["body"], headers["X-Stevora-Signature"])
    assert not verify(secret, headers["X-Stevora-Timestamp"], request["body"] + b" ", headers["X-Stevora-Signature"])
    body: dict[str, Any] = json.loads(request["body"])
    assert headers["X-Stevora-Delivery"] == body["id"] and headers["X-Stevora-Event"] == body["type"]
    return body


def test_a_run_status_change_queues_a_delivery_for_each_subscriber(transactional_db: Any,
                                                                     receiver: Receiver) -> None:
    ws = Workspace.default()
    sub = WebhookSubscription.objects.create(workspace=ws, url=receiver.url + "/hook", secret=SECRET,
                                             events=[EventType.RUN_WAITING])
    WebhookSubscription.objects.create(workspace=ws, url=receiver.url + "/other", events=[EventType.RUN_FAILED])
    load_workflow(approval_first())
    run = start_run("api-approval", {"topic": "x"}).run  # parks on its approval at once: run.waiting
    delivery = WebhookDelivery.objects.get(subscription=sub)
    assert delivery.event == "run.waiting" and delivery.url == receiver.url + "/hook"
    assert delivery.payload["type"] == "run.waiting" and delivery.payload["id"] == str(delivery.pk)
    assert delivery.payload["data"]["run"]["id"] == str(run.pk)
    assert delivery.payload["data"]["run"]["status"] == "waiting"
    assert WebhookDelivery.objects.filter(event="run.failed").count() == 0


def test_a_delivery_is_signed_and_sent_once(transactional_db: Any, receiver: Receiver) -> None:
    sub = WebhookSubscription.objects.create(workspace=Workspace.default(), url=receiver.url + "/hook",
                                             secret=SECRET, events=[EventType.RUN_WAITING])
    delivery = scheduled_later(sub.url, "run.waiting", {"run": {"id": "r1"}}, sub=sub)
    with allow_private():
        assert deliver(delivery.pk, due_by=far()) == DeliveryStatus.SUCCEEDED
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and delivery.response_code == 200 and delivery.delivered_at
    body = check_signature(receiver.requests[0])
    assert body["type"] == "run.waiting" and body["data"] == {"run": {"id": "r1"}}
    assert deliver(delivery.pk, due_by=far()) is None  # delivered: nothing more to send


def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(transactional_db: Any,
                                                                    receiver: Receiver) -> None:
    receiver.script = [500, 503]
    sub = WebhookSubscription.objects.create(workspace=Workspace.default(), url=receiver.url, secret=SECRET,
                                             events=[EventType.RUN_COMPLETED])
    delivery = scheduled_later(sub.url, data={"n": 1}, sub=sub)
    with allow_private(WEBHOOK_BACKOFF_SECONDS=100.0):  # > 60 s: no countdown message, only the row
        assert deliver(delivery.pk, due_by=far()) == DeliveryStatus.PENDING
        delivery.refresh_from_db()
        assert delivery.response_code == 500 and "HTTP 500" in delivery.error and delivery.attempts == 1
        first_wait = due_in(delivery)
        assert timedelta(seconds=70) < first_wait < timedelta(seconds=121)
        assert deliver(delivery.pk) is None  # not due yet
        postpone(delivery)
        assert deliver(delivery.pk, due_by=far()) == DeliveryStatus.PENDING
        delivery.refresh_from_db()
        # The second wait is about twice the first (exponential, with jitter of ±20%).
        assert due_in(delivery) > timedelta(seconds=150)
        postpone(delivery)
        assert deliver(delivery.pk, due_by=far()) == DeliveryStatus.SUCCEEDED
    delivery.refresh_from_db()
    assert delivery.attempts == 3 and delivery.error == "" and delivery.response_code == 200
    ids = {r["headers"]["X-Stevora-Delivery"] for r in receiver.requests}
    assert len(receiver.requests) == 3 and ids == {str(delivery.pk)}  # one id: receivers can deduplicate


def test_the_last_failed_attempt_marks_the_delivery_failed(transactional_db: Any, receiver: Receiver) -> None:
    receiver.script = [500, 500]
    delivery = scheduled_later(receiver.url, "run.failed", max_attempts=2)
    with allow_private(WEBHOOK_BACKOFF_SECONDS=100.0):
        assert deliver(delivery.pk, due_by=far()) == DeliveryStatus.PENDING
        postpone(delivery)
        assert deliver(delivery.pk, due_by=far()) == DeliveryStatus.FAILED
    assert WebhookDelivery.objects.get(pk=delivery.pk).attempts == 2


def test_private_and_loopback_addresses_are_refused_unless_allowed(transactional_db: Any,
                                                                  receiver: Receiver) -> None:
    with override_settings(STEVORA={**settings.STEVORA, "HTTP_ALLOW_PRIVATE": False}):
        for url in [receiver.url, "http://10.1.2.3/hook", "ftp://example.com/x"]:
            delivery = scheduled_later(url)
            assert deliver(delivery.pk, due_by=far()) == DeliveryStatus.FAILED
            delivery.refresh_from_db()
            assert delivery.attempts == 1 and ("not globally routable" in delivery.error or "http(s)" in delivery.error)
    assert receiver.requests == []


def test_signature_helper_matches_the_documented_recipe() -> None:
    body = b'{"id":"x"}'
    assert signature("k", 1700000000, body) == (
        "v1=" + __import__("hmac").new(b"k", b"1700000000." + body, "sha256").hexdigest())
    assert not verify("k", "1700000000", body, signature("k", 1700000000, body), now=1700000000 + 3600)


def test_the_engine_sends_run_completed_and_approval_notices_with_retries(fresh_engine: Any,
                                                                         receiver: Receiver) -> None:
    fresh_engine(STEVORA_HTTP_ALLOW_PRIVATE="true", STEVORA_WEBHOOK_SECRET=SECRET,
                 STEVORA_WEBHOOK_BACKOFF_SECONDS="0.2", STEVORA_WEBHOOK_SWEEP_SECONDS="0.5")
    receiver.script = [500]  # the first attempt fails; the retry gets through
    ws = Workspace.default()
    WebhookSubscription.objects.create(workspace=ws, url=receiver.url + "/runs", secret=SECRET,
                                       events=[EventType.RUN_COMPLETED])
    load_workflow(three_steps())
    run = start_run("api-three", {"topic": "x"}).run
    assert wait_for_run(run.pk).status == "completed"
    try:
        delivery = wait_until(lambda: WebhookDelivery.objects.filter(
            event="run.completed", status=DeliveryStatus.SUCCEEDED).first(), timeout=30,
            message="the run.completed delivery to succeed")
    except AssertionError:
        rows = list(WebhookDelivery.objects.values_list("event", "status", "attempts", "error", "next_attempt_at"))
        raise AssertionError(f"deliveries: {rows}; receiver got {len(receiver.requests)}") from None
    assert delivery.attempts == 2
    body = check_signature([r for r in receiver.requests if r["path"] == "/runs"][-1])
    assert body["data"]["run"]["status"] == "completed" and body["data"]["run"]["output"]["value"] == "c:x"

    # Approval notices: the step's own webhook and the global URL both get one, signed, with a link.
    with allow_private(APPROVAL_WEBHOOK_URL=receiver.url + "/global", WEBHOOK_SECRET=SECRET):
        load_workflow(approval_first("api-approval-hook", webhook=receiver.url + "/step"))
        parked = start_run("api-approval-hook", {"topic": "y"}).run
    approval = Approval.objects.get(run_id=parked.pk)
    wait_until(lambda: {r["path"] for r in receiver.requests} >= {"/step", "/global"}, timeout=30,
               message="both approval notices")
    for path in ("/step", "/global"):
        body = check_signature(next(r for r in receiver.requests if r["path"] == path))
        assert body["type"] == "approval.requested" and body["data"]["approval"]["id"] == approval.pk
        assert body["data"]["links"]["decide"].endswith(f"/admin/approvals/approval/{approval.pk}/decide/")


def test_a_notice_lost_to_a_crash_after_the_commit_is_sent_by_the_sweep(fresh_engine: Any, receiver: Receiver,
                                                                       tmp_path: Any) -> None:
    from webhooks.notices import sweep_notices

    sweep_notices()  # the sweep's cursor starts at the end of the history as it is now
    WebhookSubscription.objects.create(workspace=Workspace.default(), url=receiver.url + "/runs", secret=SECRET,
                                       events=[EventType.RUN_COMPLETED])
    died = tmp_path / "died"
    env = {"STEVORA_HTTP_ALLOW_PRIVATE": "true", "STEVORA_WEBHOOK_SECRET": SECRET,
           "STEVORA_WEBHOOK_SWEEP_SECONDS": "0.3", "STEVORA_NOTICE_SETTLE_SECONDS": "0.5"}
    # The process that commits the run's end is SIGKILLed before any receiver runs.
    engine = fresh_engine(**env, STEVORA_FAULT_POINT="before_notices", STEVORA_FAULT_ONCE_FILE=str(died))
    load_workflow(three_steps())
    run = start_run("api-three", {"topic": "x"}).run
    assert wait_for_run(run.pk).status == "completed"
    wait_until(died.exists, timeout=10, message="the fault point to be reached")
    assert not WebhookDelivery.objects.exists()  # nothing was queued before the kill
    if EMBEDDED:  # that was the whole engine (a prefork pool replaces its child and goes on)
        wait_until(lambda: not engine.alive(), timeout=10, message="the engine to die")
        fresh_engine(**env)
    delivery = wait_until(lambda: WebhookDelivery.objects.filter(status=DeliveryStatus.SUCCEEDED).first(),
                          timeout=30, message="the sweep to send the lost notice")
    assert delivery.event == "run.completed" and delivery.attempts == 1
    body = check_signature(next(r for r in receiver.requests if r["path"] == "/runs"))
    assert body["data"]["run"]["id"] == str(run.pk) and body["data"]["run"]["status"] == "completed"
    assert sweep_notices(settle_seconds=0) == 0  # announced once: the sweep does not write it again
    assert WebhookDelivery.objects.count() == 1 and len(receiver.requests) == 1


def test_the_receiver_and_the_sweep_write_one_delivery_per_notice(transactional_db: Any,
                                                                  receiver: Receiver) -> None:
    from runs.models import RunEvent
    from webhooks.notices import announce, sweep_notices

    sweep_notices()
    early = WebhookSubscription.objects.create(workspace=Workspace.default(), url=receiver.url + "/early",
                                               events=[EventType.RUN_WAITING])
    load_workflow(approval_first())
    run = start_run("api-approval", {"topic": "x"}).run  # parks at once: run.waiting, announced by the receiver
    assert list(WebhookDelivery.objects.values_list("subscription_id", flat=True)) == [early.pk]
    row = RunEvent.objects.get(run_id=run.pk, kind="run_waiting")
    with_later = WebhookSubscription.objects.create(workspace=Workspace.default(), url=receiver.url + "/later",
                                                    events=[EventType.RUN_WAITING])
    assert announce(row) == 1  # asked again: the early subscriber's delivery exists; the later one hears nothing
    assert sweep_notices(settle_seconds=0) == 0
    assert list(WebhookDelivery.objects.values_list("url", flat=True)) == [early.url]
    assert not WebhookDelivery.objects.filter(url=with_later.url).exists()
