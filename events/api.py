"""Event API: deliver an event (the same door as ``send_event``)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import errors
from api.fields import AnyJSONField, StrictCharField, TextOrIntegerField
from api.scoping import workspace_of

from . import services


class EventInSerializer(serializers.Serializer):
    name = StrictCharField(max_length=services.MAX_NAME)
    key = TextOrIntegerField(required=False, max_length=services.MAX_KEY,
                             help_text="Correlation key the waiting steps match on (e.g. an order id); "
                                       "an integer is stored as its text.")
    payload = AnyJSONField(required=False, help_text="Any JSON; the waiting step's output carries it "
                                                     "(null or absent: {}).")
    id = StrictCharField(required=False, max_length=255,
                         help_text="Your id for deduplication: the same id again is the same event.")


class EventOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    key = serializers.CharField(allow_blank=True)
    event_id = serializers.CharField(allow_null=True)
    payload = serializers.JSONField()
    received_at = serializers.DateTimeField()
    duplicate = serializers.BooleanField(help_text="true when this event id had been delivered already.")
    matched_steps = serializers.ListField(child=serializers.IntegerField(),
                                         help_text="Ids of the waiting steps this delivery completed.")
    started_runs = serializers.ListField(child=serializers.UUIDField(),
                                        help_text="Ids of the runs this event's triggers started (a new event only).")
    trigger_problems = serializers.ListField(child=serializers.CharField(),
                                            help_text="Triggers that matched but started no run, and why "
                                                      "(e.g. the workflow refused the input).")
    trigger_skipped = serializers.ListField(child=serializers.CharField(),
                                            help_text="Triggers whose rate_limit was reached: they started no run "
                                                      "for this event, and why.")


class EventDeliver(APIView):
    required_permissions = {"POST": ["events.add_event"]}

    @extend_schema(operation_id="events_deliver", request=EventInSerializer,
                   responses={201: EventOutSerializer, 200: EventOutSerializer},
                   summary="Deliver an event to the runs waiting for it (201; 200 for a duplicate id)")
    def post(self, request: Request) -> Response:
        body = EventInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        delivery = services.deliver_event(data["name"], key=data.get("key"), payload=data.get("payload"),
                                          event_id=data.get("id"), workspace=workspace_of(request))
        event = delivery.event
        out = {"id": event.pk, "name": event.name, "key": event.key, "event_id": event.event_id,
               "payload": event.payload, "received_at": event.received_at, "duplicate": delivery.duplicate,
               "matched_steps": delivery.matched_step_ids,
               "started_runs": delivery.started_runs, "trigger_problems": delivery.trigger_problems,
               "trigger_skipped": delivery.trigger_skipped}
        return Response(EventOutSerializer(out).data,
                        status=status.HTTP_200_OK if delivery.duplicate else status.HTTP_201_CREATED)


def register_api_errors() -> None:
    """How the API answers this app's errors (called from ``EventsConfig.ready``)."""
    errors.register(services.EventError, errors.simple(400, "invalid_input"))
