"""The admin as approval inbox: pending requests first, a page to review and decide.

The Approve / Reject buttons post to ``decide_view``, which calls
``approvals.services.decide`` — the same function as ``manage.py approve`` — so the
permission, group and state checks are the same everywhere.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from runs import admin_timeline
from steps.models import StepExecution, StepStatus

from .models import Approval, ApprovalStatus
from .services import DECIDE_PERMISSION, MAX_BULK, DecisionError, decide, decide_many, may_decide


class StatusFilter(admin.SimpleListFilter):
    """Pending by default: the inbox opens on what waits for a person."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [*ApprovalStatus.choices, ("all", "All")]

    def choices(self, changelist: Any) -> Any:
        value = self.value() or ApprovalStatus.PENDING
        for lookup, title in self.lookup_choices:
            query = changelist.get_query_string({self.parameter_name: lookup})
            yield {"selected": value == lookup, "query_string": query, "display": title}

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value() or ApprovalStatus.PENDING
        return queryset if value == "all" else queryset.filter(status=value)


@admin.register(Approval)
class ApprovalAdmin(admin.ModelAdmin):
    list_display = ("what", "workflow", "run_link", "waited", "expires", "status", "decided_by")
    list_display_links = ("what",)
    list_filter = (StatusFilter, "workflow_name")
    search_fields = ("workflow_name", "step_key", "instructions")
    ordering = ("requested_at", "id")
    show_full_result_count = False
    list_per_page = 50
    change_form_template = "admin/approvals/approval/decide.html"
    actions = ["approve_selected", "reject_selected"]

    def has_decide_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(DECIDE_PERMISSION))

    @admin.action(description="Approve selected", permissions=["decide"])
    def approve_selected(self, request: HttpRequest, queryset: QuerySet[Approval]) -> None:
        self._decide_selected(request, queryset, approve=True)

    @admin.action(description="Reject selected", permissions=["decide"])
    def reject_selected(self, request: HttpRequest, queryset: QuerySet[Approval]) -> None:
        self._decide_selected(request, queryset, approve=False)

    def _decide_selected(self, request: HttpRequest, queryset: QuerySet[Approval], *, approve: bool) -> None:
        """The same service as the API's bulk decision: each approval checked as ``decide`` checks it."""
        ids = list(queryset.order_by("requested_at", "id").values_list("pk", flat=True)[:MAX_BULK + 1])
        try:
            results = decide_many(ids, user=request.user, approve=approve)
        except (DecisionError, PermissionDenied) as exc:
            messages.error(request, f"{exc}; nothing was decided")
            return
        decided = [r for r in results if r.outcome == "decided"]
        refused = [r for r in results if r.outcome == "refused"]
        if decided:
            messages.success(request, f"{'Approved' if approve else 'Rejected'} {len(decided)} approval"
                                      f"{'' if len(decided) == 1 else 's'}; their runs resume.")
        for r in refused[:20]:
            messages.warning(request, f"Approval #{r.id} refused: {r.reason}")
        if len(refused) > 20:
            messages.warning(request, f"… and {len(refused) - 20} more refused.")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # decisions go through the decide view, never through a form

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="review")
    def what(self, obj: Approval) -> str:
        text = obj.instructions or admin_timeline.pretty(obj.content)
        return f"{obj.step_key}: {text[:80]}{'…' if len(text) > 80 else ''}"

    @admin.display(description="workflow", ordering="workflow_name")
    def workflow(self, obj: Approval) -> str:
        return obj.workflow_name

    @admin.display(description="decided by", ordering="decided_by_name")
    def decided_by(self, obj: Approval) -> str:
        return obj.decided_by_name or "—"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        title = "Approval inbox" if request.GET.get("status", "pending") == "pending" else "Approvals"
        return super().changelist_view(request, {"title": title, **(extra_context or {})})

    @admin.display(description="run")
    def run_link(self, obj: Approval) -> str:
        url = reverse("admin:runs_run_change", args=[obj.run_id])
        return format_html('<a href="{}">{}</a>', url, str(obj.run_id)[:8])

    @admin.display(description="waited", ordering="requested_at")
    def waited(self, obj: Approval) -> str:
        end = obj.decided_at if obj.status != ApprovalStatus.PENDING else None
        return admin_timeline.waited(obj.requested_at, end)

    @admin.display(description="expires", ordering="expires_at")
    def expires(self, obj: Approval) -> str:
        if obj.status != ApprovalStatus.PENDING:
            return obj.expires_at.strftime("%Y-%m-%d %H:%M") if obj.expires_at else "—"
        return admin_timeline.until(obj.expires_at)

    def get_urls(self) -> list[URLPattern]:
        custom = [
            path("<int:object_id>/decide/", self.admin_site.admin_view(self.decide_view),
                 name="approvals_approval_decide"),
        ]
        return custom + super().get_urls()

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        approval = Approval.objects.select_related("run", "run__workflow").filter(pk=object_id).first() \
            if str(object_id).isdigit() else None
        if approval is None:
            raise Http404(f"no {self.opts.verbose_name} with id {object_id!r}")
        if not self.has_view_permission(request, approval):
            raise PermissionDenied
        can_decide, why = may_decide(request.user, approval)
        is_pending = approval.status == ApprovalStatus.PENDING
        if is_pending and approval.expires_at is not None and approval.expires_at <= timezone.now():
            is_pending, why = False, "this approval has expired; on_timeout applies"
        earlier = (StepExecution.objects.filter(run_id=approval.run_id, status=StepStatus.COMPLETED)
                   .exclude(pk=approval.step_id).order_by("id").values("key", "type", "output"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts, "title": f"Approval #{approval.pk}: {approval.workflow_name} / {approval.step_key}",
            "approval": approval, "original": approval, "run": approval.run,
            "content_pretty": admin_timeline.pretty(approval.content),
            "content_is_text": isinstance(approval.content, str),
            "content_edit": approval.content if isinstance(approval.content, str)
            else json.dumps(approval.content, indent=2, ensure_ascii=False),
            "edited_pretty": admin_timeline.pretty(approval.edited_content) if approval.content_edited else "",
            "run_input": admin_timeline.pretty(approval.run.input),
            "earlier_steps": [{"key": s["key"], "type": s["type"], "output": admin_timeline.pretty(s["output"])}
                              for s in earlier[:20]],
            "can_decide": can_decide and is_pending, "is_pending": is_pending,
            "why_not": why if is_pending else "",
            "waited": admin_timeline.waited(approval.requested_at),
            "expires": admin_timeline.until(approval.expires_at),
            "has_view_permission": True,
            **(extra_context or {}),
        }
        return TemplateResponse(request, self.change_form_template, context)

    def decide_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        approval = get_object_or_404(Approval, pk=object_id)
        if request.method == "GET":
            # A link to "decide" (a webhook notice, an email) opens the review page.
            return HttpResponseRedirect(reverse("admin:approvals_approval_change", args=[approval.pk]))
        if request.method != "POST":
            return HttpResponseNotAllowed(["GET", "POST"])
        if not request.user.has_perm(DECIDE_PERMISSION):
            raise PermissionDenied(f"{request.user.get_username()} may not decide approvals")
        back = reverse("admin:approvals_approval_change", args=[approval.pk])
        action = request.POST.get("decision")
        if action not in ("approve", "reject"):
            messages.error(request, "decision: choose Approve or Reject")
            return HttpResponseRedirect(back)
        content: Any = None
        if approval.allow_edit and "content" in request.POST:
            raw = request.POST["content"]
            original = approval.content if isinstance(approval.content, str) else \
                json.dumps(approval.content, indent=2, ensure_ascii=False)
            if raw.replace("\r\n", "\n").strip() != (original or "").strip():
                if isinstance(approval.content, str):
                    content = raw.replace("\r\n", "\n")
                else:
                    try:
                        content = json.loads(raw)
                    except json.JSONDecodeError as exc:
                        messages.error(request, f"content: not valid JSON ({exc.msg} at line {exc.lineno}); "
                                                "nothing was decided")
                        return HttpResponseRedirect(back)
        try:
            decision = decide(approval.pk, user=request.user, approve=action == "approve",
                              comment=request.POST.get("comment", ""), content=content)
        except DecisionError as exc:
            messages.error(request, str(exc))
            return HttpResponseRedirect(back)
        verb = "Approved" if decision.output["approved"] else "Rejected"
        messages.success(request, format_html(
            '{} approval #{}. Run <a href="{}">{}</a> resumes.', verb, approval.pk,
            reverse("admin:runs_run_change", args=[approval.run_id]), str(approval.run_id)[:8]))
        return HttpResponseRedirect(reverse("admin:approvals_approval_changelist"))
