"""Schedule API: list the workspace's schedules, pause and resume one."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.pagination import OldestFirst
from api.scoping import workspace_of

from . import services
from .models import Schedule


class ScheduleSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    workflow = serializers.CharField(help_text="The workflow a tick starts (its latest version).")
    trigger = serializers.IntegerField(help_text="The trigger's position in the definition's `triggers:` list.")
    kind = serializers.ChoiceField(choices=["cron", "every"])
    cron = serializers.CharField(allow_null=True)
    timezone = serializers.CharField(allow_null=True, help_text="IANA time zone of a cron schedule.")
    every_seconds = serializers.IntegerField(allow_null=True)
    catch_up = serializers.ChoiceField(choices=["skip", "one", "all"])
    input = serializers.DictField(help_text="The input of every run it starts.")
    status = serializers.ChoiceField(choices=["active", "paused"])
    next_fire_at = serializers.DateTimeField(help_text="The next tick (a paused schedule: where it stopped).")
    last_tick_at = serializers.DateTimeField(allow_null=True)


def _actor(request: Request) -> str:
    prefix = getattr(getattr(request, "auth", None), "prefix", None)
    name = request.user.get_username() if request.user and request.user.is_authenticated else ""
    return f"{name} (api key {prefix})" if prefix else name


class ScheduleList(generics.GenericAPIView):
    pagination_class = OldestFirst

    def get_queryset(self) -> QuerySet[Schedule]:
        return services.schedules_of(workspace_of(self.request))

    @extend_schema(operation_id="schedules_list", responses=ScheduleSerializer(many=True),
                   summary="List the workspace's schedules with their next fire time")
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(
            ScheduleSerializer([services.as_json(s) for s in page or []], many=True).data)


class _Toggle(APIView):
    required_permissions = {"POST": ["schedules.change_schedule"]}
    action = ""

    def post(self, request: Request, schedule_id: int) -> Response:
        change: Any = services.pause_schedule if self.action == "pause" else services.resume_schedule
        schedule, _ = change(schedule_id, workspace=workspace_of(request), actor=_actor(request))
        return Response(ScheduleSerializer(services.as_json(schedule)).data)


class SchedulePause(_Toggle):
    action = "pause"

    @extend_schema(operation_id="schedules_pause", request=None, responses=ScheduleSerializer,
                   summary="Pause a schedule: it fires nothing until resumed (pausing a paused one is a no-op)")
    def post(self, request: Request, schedule_id: int) -> Response:
        return super().post(request, schedule_id)


class ScheduleResume(_Toggle):
    action = "resume"

    @extend_schema(operation_id="schedules_resume", request=None, responses=ScheduleSerializer,
                   summary="Resume a schedule from its first tick after now (ticks missed while paused "
                           "are not fired)")
    def post(self, request: Request, schedule_id: int) -> Response:
        return super().post(request, schedule_id)
