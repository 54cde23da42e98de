"""Approval API: the pending approvals the caller may decide, and ``decide`` (the same door as the admin)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import errors
from api.fields import AnyJSONField, StrictBooleanField, StrictCharField
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


def _decision_error(exc: services.DecisionError) -> Response:
    fields = errors.field_error(str(exc))
    if fields and fields[0]["field"].split(".")[0].split("[")[0] in {"approve", "comment", "content"}:
        return Response(errors.body("invalid_input", str(exc), fields), 400)
    return Response(errors.body("conflict", str(exc)), 409)


def register_api_errors() -> None:
    """How the API answers this app's errors (called from ``ApprovalsConfig.ready``)."""
    errors.register(services.DecisionError, _decision_error)
    errors.register(services.ApprovalNotFound, lambda exc: Response(errors.body("not_found", str(exc)), 404))
