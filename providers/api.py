"""Cost API: what a workspace's LLM calls cost, by period, workflow and provider, and one run's cost."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count, Sum
from django.db.models.functions import TruncDay, TruncMonth, TruncWeek
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.fields import QuerySerializer
from api.scoping import get_scoped, workspace_of
from runs.models import Run

from .models import LLMCall

TRUNC = {"day": TruncDay, "week": TruncWeek, "month": TruncMonth}


class CostQuerySerializer(QuerySerializer):
    period = serializers.ChoiceField(choices=list(TRUNC), default="day", help_text="Bucket size of `by_period`.")
    since = serializers.DateTimeField(required=False, help_text="ISO 8601, inclusive (default: 30 days before "
                                                                "`until`). `since` at or after `until` is an "
                                                                "empty window: zero totals.")
    until = serializers.DateTimeField(required=False, help_text="ISO 8601, exclusive (default: now).")
    workflow = serializers.CharField(required=False, max_length=200, help_text="Only this workflow's runs.")
    provider = serializers.CharField(required=False, max_length=100, help_text="Only this provider's calls.")


class CostRowSerializer(serializers.Serializer):
    key = serializers.CharField(help_text="The group: a period start (ISO 8601), a workflow or a provider name.")
    calls = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=14, decimal_places=6, coerce_to_string=True)


class CostSummarySerializer(serializers.Serializer):
    period = serializers.CharField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    total = CostRowSerializer()
    by_period = CostRowSerializer(many=True)
    by_workflow = CostRowSerializer(many=True)
    by_provider = CostRowSerializer(many=True)


class RunCostRowSerializer(CostRowSerializer):
    key = serializers.CharField(help_text="The group: a step key or a provider name.")


class RunCostSerializer(serializers.Serializer):
    run = serializers.UUIDField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=14, decimal_places=6, coerce_to_string=True)
    max_cost_usd = serializers.DecimalField(max_digits=14, decimal_places=6, coerce_to_string=True,
                                            allow_null=True)
    max_tokens = serializers.IntegerField(allow_null=True)
    by_step = RunCostRowSerializer(many=True)
    by_provider = RunCostRowSerializer(many=True)


def _rows(qs: Any, field: str) -> list[dict[str, Any]]:
    rows = qs.values(field).annotate(calls=Count("id"), input_tokens=Sum("input_tokens"),
                                     output_tokens=Sum("output_tokens"), cost_usd=Sum("cost_usd")).order_by(field)
    out = []
    for r in rows:
        key = r[field]
        out.append({"key": key.isoformat() if hasattr(key, "isoformat") else str(key), "calls": r["calls"],
                    "input_tokens": r["input_tokens"] or 0, "output_tokens": r["output_tokens"] or 0,
                    "cost_usd": r["cost_usd"] or 0})
    return out


class CostSummary(APIView):
    @extend_schema(operation_id="cost_summary", parameters=[CostQuerySerializer], responses=CostSummarySerializer,
                   summary="LLM cost of the caller's workspace by period, workflow and provider")
    def get(self, request: Request) -> Response:
        query = CostQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        q = query.validated_data
        until = q.get("until") or timezone.now()
        try:
            since = q.get("since") or until - timedelta(days=30)
        except OverflowError:  # an `until` in year 1: the window starts where it ends
            since = until
        calls = LLMCall.objects.filter(run__workspace=workspace_of(request), started_at__gte=since,
                                       started_at__lt=until)
        if q.get("workflow"):
            calls = calls.filter(run__workflow_name=q["workflow"])
        if q.get("provider"):
            calls = calls.filter(provider_name=q["provider"])
        totals = calls.aggregate(calls=Count("id"), input_tokens=Sum("input_tokens"),
                                 output_tokens=Sum("output_tokens"), cost_usd=Sum("cost_usd"))
        data = {
            "period": q["period"], "since": since, "until": until,
            "total": {"key": "total", "calls": totals["calls"] or 0, "input_tokens": totals["input_tokens"] or 0,
                      "output_tokens": totals["output_tokens"] or 0, "cost_usd": totals["cost_usd"] or 0},
            "by_period": _rows(calls.annotate(bucket=TRUNC[q["period"]]("started_at")), "bucket"),
            "by_workflow": _rows(calls, "run__workflow_name"),
            "by_provider": _rows(calls, "provider_name"),
        }
        return Response(CostSummarySerializer(data).data)


class RunCost(APIView):
    @extend_schema(operation_id="runs_cost", responses=RunCostSerializer,
                   summary="The run's tokens and cost, by step and by provider")
    def get(self, request: Request, run_id: str) -> Response:
        run = get_scoped(request, Run.objects.all(), "run", pk=run_id)
        calls = LLMCall.objects.filter(run_id=run.pk)
        data = {"run": run.pk, "input_tokens": run.input_tokens, "output_tokens": run.output_tokens,
                "cost_usd": run.cost_usd, "max_cost_usd": run.max_cost_usd, "max_tokens": run.max_tokens,
                "by_step": _rows(calls.exclude(step__isnull=True), "step__key"),
                "by_provider": _rows(calls, "provider_name")}
        return Response(RunCostSerializer(data).data)
