"""Approval API: the pending approvals the caller may decide, and ``decide`` (the same door as the admin)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import errors
from api.fields import AnyJSONField, StrictBooleanField, StrictCharField, StrictIntegerField
from api.pagination import StrictCursorPagination
from api.scoping import get_scoped, workspace_of

from . import services
from .models import Approval, ApprovalStatus


class ApprovalSerializer(serializers.ModelSerializer):
    run = serializers.UUIDField(source="run_id")
    content = serializers.JSONField(allow_null=True)
    edited_content = serializers.JSONField(allow_null=True)
    allowed_groups = serializers.ListField(child=serializers.CharField())
    allowed_users = serializers.ListField(child=serializers.CharField())
    status = serializers.ChoiceField(choices=ApprovalStatus.choices)
    kind = serializers.CharField(help_text="step (an approval step), tool_call (a requires_approval tool's "
                                           "arguments) or tool_crash (an irreversible tool call cut off by a crash)")

    class Meta:
        model = Approval
        fields = ["id", "run", "workflow_name", "step_key", "kind", "status", "content", "instructions",
                  "allowed_groups", "allowed_users", "allow_edit", "on_timeout", "requested_at", "expires_at",
                  "decided_by_name", "decided_at", "comment", "content_edited", "edited_content"]
        read_only_fields = fields


class DecideSerializer(serializers.Serializer):
    approve = StrictBooleanField(help_text="true to approve, false to reject.")
    comment = StrictCharField(required=False, allow_blank=True, default="", max_length=services.MAX_COMMENT)
    content = AnyJSONField(required=False, help_text="Edited content (only where the step allows edits; "
                                                     "null: unchanged).")


class BulkDecideSerializer(serializers.Serializer):
    ids = serializers.ListField(
        child=StrictIntegerField(min_value=1, max_value=2**63 - 1), required=False, allow_empty=False,
        max_length=services.MAX_BULK,
        help_text=f"The approvals to decide (at most {services.MAX_BULK}). Or a filter: `workflow` and/or "
                  "`all_pending`.")
    workflow = StrictCharField(required=False, max_length=200,
                               help_text="Filter: the pending approvals of this workflow (oldest first).")
    all_pending = StrictBooleanField(required=False, default=False,
                                     help_text=f"Filter: every pending approval of the workspace (oldest first, "
                                               f"at most {services.MAX_BULK} per call).")
    approve = StrictBooleanField(help_text="true to approve, false to reject.")
    comment = StrictCharField(required=False, allow_blank=True, default="", max_length=services.MAX_COMMENT)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        has_filter = "workflow" in attrs or attrs.get("all_pending")
        if "ids" in attrs and has_filter:
            raise serializers.ValidationError({"ids": ["give either ids or a filter (workflow, all_pending), "
                                                       "not both"]})
        if "ids" not in attrs and not has_filter:
            raise serializers.ValidationError({"ids": ["give ids, or a filter: workflow and/or all_pending: true"]})
        return attrs


class BulkItemSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    outcome = serializers.ChoiceField(choices=["decided", "refused"])
    status = serializers.CharField(help_text="The approval's new status when decided; empty when refused.")
    reason = serializers.CharField(help_text="Why it was refused; empty when decided.")
    run = serializers.UUIDField(source="run_id", allow_null=True)


class BulkDecisionSerializer(serializers.Serializer):
    decided = serializers.IntegerField()
    refused = serializers.IntegerField()
    results = BulkItemSerializer(many=True, help_text="One per id, in the order asked.")


class DecisionSerializer(serializers.Serializer):
    approval = ApprovalSerializer()
    output = serializers.JSONField(help_text="The approval step's output, as the run sees it.")


class OldestRequestFirst(StrictCursorPagination):
    ordering = ("requested_at", "id")


class ApprovalList(generics.GenericAPIView):
    pagination_class = OldestRequestFirst

    @extend_schema(operation_id="approvals_pending", responses=ApprovalSerializer(many=True),
                   summary="Pending approvals the caller may decide, oldest first (cursor pagination)")
    def get(self, request: Request) -> Response:
        rows = services.decidable_by(request.user).filter(workspace=workspace_of(request))
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(ApprovalSerializer(page, many=True).data)


class ApprovalDecide(APIView):
    # decide() checks the decide permission and the step's approvers itself (403, nothing changes).
    may_conflict = True

    @extend_schema(operation_id="approvals_decide", request=DecideSerializer, responses=DecisionSerializer,
                   summary="Approve or reject; 403 without the decide permission, 409 when already decided")
    def post(self, request: Request, approval_id: int) -> Response:
        approval = get_scoped(request, Approval.objects.all(), "approval", pk=approval_id)
        body = DecideSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data: dict[str, Any] = body.validated_data
        decision = services.decide(approval.pk, user=request.user, approve=data["approve"],
                                   comment=data.get("comment", ""), content=data.get("content"))
        return Response(DecisionSerializer({"approval": decision.approval, "output": decision.output}).data)


class ApprovalBulkDecide(APIView):
    # decide_many() checks the decide permission and each step's approvers (a refusal per id);
    # a 409 only if approvals changed under the run locks (nothing in that chunk decided).
    may_conflict = True

    @extend_schema(operation_id="approvals_decide_many", request=BulkDecideSerializer,
                   responses=BulkDecisionSerializer,
                   summary="Approve or reject many approvals (ids or a filter); a result per id: decided, or "
                           "refused with the reason")
    def post(self, request: Request) -> Response:
        body = BulkDecideSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data: dict[str, Any] = body.validated_data
        workspace = workspace_of(request)
        ids = data.get("ids")
        if ids is None:
            ids = services.pending_ids(workflow=data.get("workflow"), workspace=workspace)
        results = services.decide_many(ids, user=request.user, approve=data["approve"],
                                       comment=data.get("comment", ""), workspace=workspace)
        decided = sum(1 for r in results if r.outcome == "decided")
        return Response(BulkDecisionSerializer({"decided": decided, "refused": len(results) - decided,
                                                "results": results}).data)


def _decision_error(exc: services.DecisionError) -> Response:
    fields = errors.field_error(str(exc))
    if fields and fields[0]["field"].split(".")[0].split("[")[0] in {"approve", "comment", "content", "ids"}:
        return Response(errors.body("invalid_input", str(exc), fields), 400)
    return Response(errors.body("conflict", str(exc)), 409)


def register_api_errors() -> None:
    """How the API answers this app's errors (called from ``ApprovalsConfig.ready``)."""
    errors.register(services.DecisionError, _decision_error)
    errors.register(services.ApprovalNotFound, lambda exc: Response(errors.body("not_found", str(exc)), 404))
