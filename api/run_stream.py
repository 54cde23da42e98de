"""``GET /api/v1/runs/<id>/stream/``: Server-Sent Events of a run's history and live text.

Two kinds of events, one ``id`` line each, ``<history id>:<live cursor>``:

* ``event: history`` — a RunEvent row (the shape of ``…/history/``), in id order. On
  reconnection with ``Last-Event-ID`` the history resumes exactly after the row last seen:
  no row is repeated and none is skipped (they are rows of the database of record).
* ``event: delta`` — a piece of a streamed LLM answer (``steps.live``): ``{step, attempt,
  round, call, provider, kind, text, cursor}``. Best effort: they resume from the cursor
  while the live channel still holds it (trimmed after ``STEVORA_LIVE_TTL_SECONDS`` or
  ``STEVORA_LIVE_MAX_PER_RUN`` pieces); ``kind: discard`` says the text of ``call`` so far
  was thrown away (that HTTP attempt failed; another follows).

``event: end`` (``{"status"}``) closes the stream once the run is completed, failed or
cancelled and everything before was sent. A stream also closes after
``STEVORA_SSE_MAX_SECONDS`` (``event: reconnect``): a browser's EventSource reconnects
by itself with ``Last-Event-ID``; other clients do the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from runs.models import Run, RunEvent, RunStatus
from steps import live

from .run_serializers import RunEventSerializer
from .scoping import get_scoped

ENDED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
POLL_SECONDS = 0.2
KEEPALIVE_SECONDS = 10.0


# One Server-Sent Event as its fields (how OpenAPI tools such as schemathesis read a text/event-stream).
EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["history", "delta", "end", "reconnect"]},
        "data": {"type": "string", "description": "JSON: a history row, a delta, or {status} / {after_seconds}"},
        "id": {"type": "string", "description": "<history id>:<live cursor>; send back as Last-Event-ID"},
        "retry": {"type": "integer", "description": "reconnection delay in milliseconds"},
    },
}


def parse_last_event_id(raw: str) -> tuple[int, str]:
    """``<history id>:<live cursor>`` (either part may be empty) -> (history id, cursor)."""
    head, sep, cursor = raw.strip().partition(":")
    if not head and not sep:
        return 0, ""
    if (head and not head.isdigit()) or len(head) > 18 or not live.valid_cursor(cursor):
        raise ValidationError({"Last-Event-ID": [f"not an id this stream sent: {raw[:80]!r}"]})
    return int(head or 0), cursor


def sse(event: str, data: Any, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str, ensure_ascii=False)}\n\n"


def events_of(run_id: Any, history_id: int, cursor: str, max_seconds: float) -> Iterator[str]:
    deadline = time.monotonic() + max_seconds
    last_write = time.monotonic()
    yield "retry: 1000\n\n"
    while True:
        # The status first: once it says ended, one more pass sends everything before the end.
        status = Run.objects.filter(pk=run_id).values_list("status", flat=True).first()
        sent = False
        while True:
            rows = list(RunEvent.objects.filter(run_id=run_id, id__gt=history_id).order_by("id")[:200])
            for row in rows:
                history_id = row.pk
                yield sse("history", RunEventSerializer(row).data, f"{history_id}:{cursor}")
            deltas = live.read(run_id, cursor, limit=500)
            for delta in deltas:
                cursor = delta["cursor"]
                yield sse("delta", delta, f"{history_id}:{cursor}")
            sent = sent or bool(rows or deltas)
            if len(rows) < 200 and len(deltas) < 500:
                break
        if status is None or status in ENDED:
            yield sse("end", {"status": status}, f"{history_id}:{cursor}")
            return
        now = time.monotonic()
        if now >= deadline:
            yield sse("reconnect", {"after_seconds": max_seconds}, f"{history_id}:{cursor}")
            return
        if sent:
            last_write = now
        elif now - last_write >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_write = now
        if live.backend() == "redis":
            # Wait on the live stream itself: a token is sent as soon as it is written.
            if live.read(run_id, cursor, limit=1, block_ms=int(POLL_SECONDS * 1000)):
                continue
        else:
            time.sleep(POLL_SECONDS)


class RunStream(APIView):
    renderer_classes = [JSONRenderer]  # errors are the API's JSON error body, whatever was asked

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        """``Accept: text/event-stream`` (what an EventSource sends) is this view's answer: accepted."""
        if "text/event-stream" in request.headers.get("Accept", ""):
            return JSONRenderer(), "application/json"
        return super().perform_content_negotiation(request, force)

    @extend_schema(
        operation_id="runs_stream",
        summary="Server-Sent Events: the run's history and its LLM steps' text as it is written",
        description=(
            "`event: history` (a history row, as in `…/history/`), `event: delta` (a piece of a streamed "
            "LLM answer: step, attempt, round, call, provider, kind `text`|`discard`, text), then "
            "`event: end` with the run's final status. Each event's `id` is `<history id>:<live cursor>`; "
            "send it back as `Last-Event-ID` to resume: history exactly, deltas while still kept. "
            "A stream closes after STEVORA_SSE_MAX_SECONDS with `event: reconnect`."),
        parameters=[OpenApiParameter("Last-Event-ID", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
                                     description="The `id` of the last event received; resume after it."),
                    OpenApiParameter("last_event_id", OpenApiTypes.STR, OpenApiParameter.QUERY, required=False,
                                     description="The same, for clients that cannot set the header.")],
        responses={(200, "text/event-stream"): OpenApiResponse(EVENT_SCHEMA, description="the event stream")},
    )
    def get(self, request: Request, run_id: str) -> StreamingHttpResponse:
        run = get_scoped(request, Run.objects.all(), "run", pk=run_id)
        raw = request.headers.get("Last-Event-ID") or request.query_params.get("last_event_id") or ""
        history_id, cursor = parse_last_event_id(raw)
        max_seconds = float(settings.STEVORA.get("SSE_MAX_SECONDS", 25.0))
        response = StreamingHttpResponse(events_of(run.pk, history_id, cursor, max_seconds),
                                         content_type="text/event-stream; charset=utf-8")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
        return response
