"""Run, definition and step API views: thin doors over ``runs.services``.

Every view scopes its queries to the caller's workspace (``api.scoping``): another
workspace's run is a 404. Domain errors raised by the services become error bodies
in ``api.errors``; nothing here catches them.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from runs import services
from runs.definitions import parse_text
from runs.models import Run, RunEvent, Workflow
from steps.models import StepExecution

from .fields import INT32_MAX
from .pagination import NewestFirst, OldestFirst
from .run_serializers import (
    BatchStartedSerializer,
    ControlSerializer,
    DefinitionCreatedSerializer,
    DefinitionCreateSerializer,
    DefinitionFilterSerializer,
    ForkSerializer,
    RunBatchStartSerializer,
    RunDetailSerializer,
    RunDiffSerializer,
    RunEventSerializer,
    RunFilterSerializer,
    RunSerializer,
    RunStartSerializer,
    StepDetailSerializer,
    WorkflowSerializer,
    WorkflowSummarySerializer,
)
from .scoping import get_scoped, scoped, workspace_of

ATTEMPT_KINDS = {"step_completed": "completed", "step_retry_scheduled": "retry_scheduled",
                 "step_failed": "failed", "step_recovered": "recovered"}


def actor_of(request: Request) -> str:
    auth = getattr(request, "auth", None)
    name = request.user.get_username() if request.user and request.user.is_authenticated else ""
    prefix = getattr(auth, "prefix", None)
    return f"{name} (api key {prefix})" if prefix else name


# --- definitions -------------------------------------------------------------------------


class DefinitionListCreate(generics.GenericAPIView):
    pagination_class = NewestFirst
    required_permissions = {"POST": ["runs.add_workflow"]}

    def get_queryset(self) -> QuerySet[Workflow]:
        filters = DefinitionFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        qs = scoped(self.request, Workflow.objects.all())
        name = filters.validated_data.get("name")
        return qs.filter(name=name) if name else qs

    @extend_schema(operation_id="definitions_list", responses=WorkflowSummarySerializer(many=True),
                   parameters=[DefinitionFilterSerializer],
                   summary="List stored definition versions, newest first")
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(WorkflowSummarySerializer(page, many=True).data)

    @extend_schema(operation_id="definitions_create", request=DefinitionCreateSerializer,
                   responses={201: DefinitionCreatedSerializer, 200: DefinitionCreatedSerializer},
                   summary="Store a definition (validated; same content: the same version, 200; changed: N+1, 201)")
    def post(self, request: Request) -> Response:
        body = DefinitionCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        document = body.validated_data["definition"]
        if isinstance(document, str):
            document = parse_text(document, "definition")
        result = services.load_workflow(document, workspace=workspace_of(request))
        data = {**WorkflowSerializer(result.workflow).data, "created": result.created}
        return Response(data, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


class DefinitionDetail(APIView):
    @extend_schema(operation_id="definitions_latest", responses=WorkflowSerializer,
                   summary="The latest version of a workflow")
    def get(self, request: Request, name: str) -> Response:
        workflow = services.resolve_workflow(name, workspace=workspace_of(request))
        return Response(WorkflowSerializer(workflow).data)


class DefinitionVersion(APIView):
    @extend_schema(operation_id="definitions_version", responses=WorkflowSerializer,
                   summary="One version of a workflow")
    def get(self, request: Request, name: str, version: int) -> Response:
        if not 1 <= version <= INT32_MAX:
            raise services.NotFound(f"no workflow named {name!r} v{version}")
        workflow = services.resolve_workflow(name, workspace=workspace_of(request), version=version)
        return Response(WorkflowSerializer(workflow).data)


# --- runs ------------------------------------------------------------------------------


def _run(request: Request, run_id: Any) -> Run:
    return get_scoped(request, Run.objects.select_related("workflow"), "run", pk=run_id)


class RunListCreate(generics.GenericAPIView):
    pagination_class = NewestFirst
    required_permissions = {"POST": ["runs.add_run"]}

    def get_queryset(self) -> QuerySet[Run]:
        filters = RunFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        f = filters.validated_data
        qs = scoped(self.request, Run.objects.select_related("workflow"))
        if f.get("status"):
            qs = qs.filter(status=f["status"])
        if f.get("workflow"):
            qs = qs.filter(workflow_name=f["workflow"])
        if f.get("created_after"):
            qs = qs.filter(created_at__gte=f["created_after"])
        if f.get("created_before"):
            qs = qs.filter(created_at__lt=f["created_before"])
        return qs

    @extend_schema(operation_id="runs_list", parameters=[RunFilterSerializer], responses=RunSerializer(many=True),
                   summary="List runs, newest first (cursor pagination)")
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(RunSerializer(page, many=True).data)

    @extend_schema(
        operation_id="runs_start", request=RunStartSerializer,
        parameters=[OpenApiParameter("Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": 255,
                                                         "pattern": r"\S"}, OpenApiParameter.HEADER,
                                     description="The same key returns the same run (200 instead of 201).")],
        responses={201: RunDetailSerializer, 200: OpenApiResponse(RunDetailSerializer,
                                                                 description="The run this idempotency key started.")},
        summary="Start a run")
    def post(self, request: Request) -> Response:
        body = RunStartSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        header_key = request.headers.get("Idempotency-Key")
        key = data.get("idempotency_key")
        if header_key is not None:
            header_key = header_key.strip()
            if not header_key or len(header_key) > 255:
                raise ValidationError({"Idempotency-Key": ["must be a non-empty string of at most 255 characters"]})
            if key is not None and key != header_key:
                raise ValidationError({"idempotency_key": ["differs from the Idempotency-Key header"]})
            key = header_key
        budget = {k: str(data[k]) for k in ("max_cost_usd", "max_tokens") if data.get(k) is not None}
        result = services.start_run(data["workflow"], data.get("input", {}), workspace=workspace_of(request),
                                    version=data.get("version"), idempotency_key=key, actor=actor_of(request),
                                    budget=budget or None, priority=data.get("priority"))
        run = Run.objects.select_related("workflow").get(pk=result.run.pk)
        return Response(RunDetailSerializer(run).data,
                        status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


class RunBatchStart(APIView):
    required_permissions = {"POST": ["runs.add_run"]}

    @extend_schema(operation_id="runs_start_batch", request=RunBatchStartSerializer,
                   responses={201: BatchStartedSerializer,
                              200: OpenApiResponse(BatchStartedSerializer,
                                                   description="Every item named an existing run")},
                   summary="Start many runs of one workflow at once; one bad item starts none and is named")
    def post(self, request: Request) -> Response:
        body = RunBatchStartSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        budget = {k: str(data[k]) for k in ("max_cost_usd", "max_tokens") if data.get(k) is not None}
        items = [services.BatchItem(item.get("input", {}), item.get("idempotency_key")) for item in data["items"]]
        results = services.start_runs(data["workflow"], items, workspace=workspace_of(request),
                                      version=data.get("version"), actor=actor_of(request), budget=budget or None,
                                      priority=data.get("priority"))
        created = sum(1 for r in results if r.created)
        answer = {"created": created, "existing": len(results) - created,
                  "runs": [{"id": r.run.pk, "status": r.run.status, "created": r.created} for r in results]}
        return Response(BatchStartedSerializer(answer).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class RunDetail(APIView):
    @extend_schema(operation_id="runs_retrieve", responses=RunDetailSerializer, summary="A run with its steps")
    def get(self, request: Request, run_id: str) -> Response:
        return Response(RunDetailSerializer(_run(request, run_id)).data)


class _Control(APIView):
    required_permissions = {"POST": ["runs.change_run"]}
    may_conflict = True
    action = ""

    def post(self, request: Request, run_id: str) -> Response:
        run = _run(request, run_id)
        body = ControlSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        actor = actor_of(request)
        if self.action == "cancel":
            services.cancel_run(run.pk, actor=actor, reason=body.validated_data.get("reason", ""))
        else:
            getattr(services, f"{self.action}_run")(run.pk, actor=actor)
        return Response(RunDetailSerializer(_run(request, run_id)).data)


def _control_view(action: str, summary: str) -> type[_Control]:
    def post(self: _Control, request: Request, run_id: str) -> Response:
        return _Control.post(self, request, run_id)

    decorated = extend_schema(operation_id=f"runs_{action}", request=ControlSerializer,
                              responses=RunDetailSerializer, summary=summary)(post)
    return type(f"Run{action.title()}", (_Control,), {"action": action, "post": decorated})


RunCancel = _control_view("cancel", "Cancel an unfinished run")
RunPause = _control_view("pause", "Pause a running or waiting run")
RunResume = _control_view("resume", "Resume a paused run")
RunRetry = _control_view("retry", "Retry a failed run from its failed step")


class RunFork(APIView):
    required_permissions = {"POST": ["runs.add_run"]}
    may_conflict = True  # a run still moving cannot be forked (pause or cancel it first)

    @extend_schema(operation_id="runs_fork", request=ForkSerializer, responses={201: RunDetailSerializer},
                   summary="A new run that keeps the results of the steps before `from_step` and runs from there")
    def post(self, request: Request, run_id: str) -> Response:
        source = _run(request, run_id)
        body = ForkSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        forked = services.fork_run(source.pk, from_step=data["from_step"], run_input=data.get("input"),
                                   actor=actor_of(request), replay=data.get("replay", "none"))
        run = Run.objects.select_related("workflow").get(pk=forked.pk)
        return Response(RunDetailSerializer(run).data, status=status.HTTP_201_CREATED)


class RunDiff(APIView):
    @extend_schema(operation_id="runs_diff", responses=RunDiffSerializer,
                   summary="Two runs compared: where they first part, and per step what differs")
    def get(self, request: Request, run_id: str, other_id: str) -> Response:
        a, b = _run(request, run_id), _run(request, other_id)  # both in the caller's workspace
        return Response(services.diff_runs(a.pk, b.pk))


class RunHistory(generics.GenericAPIView):
    pagination_class = OldestFirst

    @extend_schema(operation_id="runs_history", responses=RunEventSerializer(many=True),
                   summary="The run's append-only history, oldest first")
    def get(self, request: Request, run_id: str) -> Response:
        run = _run(request, run_id)
        page = self.paginate_queryset(RunEvent.objects.filter(run_id=run.pk))
        return self.get_paginated_response(RunEventSerializer(page, many=True).data)


# --- steps ------------------------------------------------------------------------------


def attempts_of(run: Run, key: str) -> list[dict[str, Any]]:
    out = []
    for event in RunEvent.objects.filter(run_id=run.pk, step_key=key, kind__in=ATTEMPT_KINDS).order_by("id"):
        data = event.data or {}
        out.append({"attempt": data.get("attempt"), "outcome": ATTEMPT_KINDS[event.kind],
                    "worker": str(data.get("worker", "")), "started_at": data.get("started_at"),
                    "duration_ms": data.get("duration_ms"), "message": event.message or "",
                    "error": data.get("error"), "at": event.created_at})
    return out


class StepDetail(APIView):
    @extend_schema(operation_id="steps_retrieve", responses=StepDetailSerializer,
                   parameters=[OpenApiParameter("step_key", OpenApiTypes.STR, OpenApiParameter.PATH,
                                                description="The step's key: `draft`, `draft#2` (a loop's second "
                                                            "visit), `gather[3]` (a map item); URL-encoded.")],
                   summary="One step of a run with its attempts and LLM calls")
    def get(self, request: Request, run_id: str, step_key: str) -> Response:
        run = _run(request, run_id)
        row = StepExecution.objects.filter(run_id=run.pk, key=step_key).first()
        if row is None:
            raise services.NotFound(f"run {run.pk} has no step {step_key!r}")
        row.api_attempts = attempts_of(run, row.key)  # type: ignore[attr-defined]
        calls: list[Any] = []
        if apps.is_installed("providers") and hasattr(row, "llm_calls"):
            calls = list(row.llm_calls.order_by("id"))
        row.api_llm_calls = calls  # type: ignore[attr-defined]
        # Tool calls of an llm step's agent loop (the providers app's rows, through the reverse relation).
        tools = list(row.tool_calls.order_by("id")) if hasattr(row, "tool_calls") else []
        row.api_tool_calls = tools  # type: ignore[attr-defined]
        return Response(StepDetailSerializer(row).data)


__all__ = [
    "DefinitionDetail", "DefinitionListCreate", "DefinitionVersion", "RunCancel", "RunDetail",
    "RunFork", "RunHistory", "RunListCreate", "RunPause", "RunResume", "RunRetry", "StepDetail",
    "serializers",
]
