"""The admin as run observatory: a run list that stays fast, and a run page with a
drawn timeline, each step's attempts, errors, input/output and the history.

Actions are thin: they call ``runs.services`` and report how many runs changed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

from steps.models import StepExecution

from . import admin_timeline, dashboard, services
from .admin_timeline import STEP_PANELS
from .models import RUN_TERMINAL, IllegalTransition, Run, RunEvent, RunStatus, Workflow, Workspace

COUNT_CAP = 10_000
# The admin index links to the dashboard (runs.dashboard).
admin.site.index_template = "admin/stevora_index.html"
STATUS_COLORS = {"completed": "#cfeccf", "failed": "#f4c7c3", "running": "#cfe2f3", "pending": "#e8eef5",
                 "queued": "#e8eef5", "waiting": "#fbe8b0", "paused": "#fbe8b0", "cancelled": "#e3e3e3"}


class CappedCountPaginator(Paginator):
    """Counts at most COUNT_CAP rows (``SELECT count(*) FROM (… LIMIT n)``): a run table of
    millions still pages instantly; past the cap the admin shows the first 10,000."""

    @cached_property
    def count(self) -> int:
        qs = self.object_list
        if isinstance(qs, QuerySet):
            return qs.order_by()[:COUNT_CAP].count()
        return len(qs)


class WorkflowNameFilter(admin.SimpleListFilter):
    """Workflow names from the (small) Workflow table, not a DISTINCT over all runs."""

    title = "workflow"
    parameter_name = "workflow"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = Workflow.objects.order_by("name").values_list("name", flat=True).distinct()
        return [(n, n) for n in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(workflow_name=self.value()) if self.value() else queryset


def _control_action(service: Callable[..., Run], name: str, verb: str) -> Callable[..., None]:
    def action(modeladmin: RunAdmin, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        changed, refused = 0, []
        for run_id in queryset.values_list("pk", flat=True)[:1000]:
            try:
                service(run_id, actor=f"admin:{request.user.get_username()}")
                changed += 1
            except (IllegalTransition, services.NotFound) as exc:
                refused.append(str(exc))
        if changed:
            modeladmin.message_user(request, f"{changed} run{'s' if changed != 1 else ''} {verb}.", messages.SUCCESS)
        if refused:
            detail = "; ".join(refused[:3]) + (" …" if len(refused) > 3 else "")
            modeladmin.message_user(request, f"{len(refused)} run{'s' if len(refused) != 1 else ''} not {verb}: "
                                             f"{detail}", messages.WARNING)
        if not changed and not refused:
            modeladmin.message_user(request, f"0 runs {verb}.", messages.INFO)

    action.__name__ = f"{name}_runs"
    return action


cancel_runs = admin.action(description="Cancel selected runs", permissions=["change"])(
    _control_action(services.cancel_run, "cancel", "cancelled"))
pause_runs = admin.action(description="Pause selected runs", permissions=["change"])(
    _control_action(services.pause_run, "pause", "paused"))
resume_runs = admin.action(description="Resume selected (paused) runs", permissions=["change"])(
    _control_action(services.resume_run, "resume", "resumed"))
retry_runs = admin.action(description="Retry selected (failed) runs", permissions=["change"])(
    _control_action(services.retry_run, "retry", "retried"))


@admin.action(description="Fork the selected run (choose the step)…")
def fork_runs(modeladmin: RunAdmin, request: HttpRequest, queryset: QuerySet[Run]) -> HttpResponse | None:
    """A fork needs a step (and maybe an input): this opens the fork page of the one run selected."""
    ids = list(queryset.values_list("pk", flat=True)[:2])
    if len(ids) != 1:
        modeladmin.message_user(request, "Select exactly one run to fork (0 runs forked).", messages.WARNING)
        return None
    return HttpResponseRedirect(reverse("admin:runs_run_fork", args=[ids[0]]))


FORKABLE = (*RUN_TERMINAL, RunStatus.PAUSED)

CONTROLS: dict[str, tuple[Callable[..., Run], str]] = {
    "cancel": (services.cancel_run, "cancelled"), "pause": (services.pause_run, "paused"),
    "resume": (services.resume_run, "resumed"), "retry": (services.retry_run, "retried"),
}


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("short_id", "workflow_name", "status_badge", "created_at", "duration", "cost_usd")
    list_filter = ("status", WorkflowNameFilter, ("created_at", admin.DateFieldListFilter))
    search_fields = ("idempotency_key",)
    search_help_text = "A run id (UUID) or an idempotency key (exact)."
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facet counts are a COUNT per filter choice: slow on big tables
    paginator = CappedCountPaginator
    list_per_page = 50
    # Newest first within a workspace: the (workspace, -created_at) index serves it with an
    # incremental sort; a bare -created_at (plus the admin's -pk tiebreak) sorts the whole table.
    ordering = ("workspace", "-created_at")
    actions = [cancel_runs, pause_runs, resume_runs, retry_runs, fork_runs]
    change_form_template = "admin/runs/run/observatory.html"

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Run],
                           search_term: str) -> tuple[QuerySet[Run], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(pk=uuid.UUID(term)), False
        except ValueError:
            pass
        # The unique index on idempotency keys leads with (workspace, workflow_name): name every
        # pair (from the small Workflow table) so PostgreSQL can use it instead of a full scan.
        pairs = list(Workflow.objects.values_list("workspace_id", "name").distinct()[:201])
        if 0 < len(pairs) <= 200:
            match = Q()
            for workspace_id, name in pairs:
                match |= Q(workspace_id=workspace_id, workflow_name=name, idempotency_key=term)
            return queryset.filter(match), False
        return queryset.filter(idempotency_key=term), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="run", ordering="id")
    def short_id(self, obj: Run) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Run) -> str:
        return format_html('<span style="padding:1px 6px;border-radius:8px;background:{};color:#222">{}</span>',
                           STATUS_COLORS.get(obj.status, "#ddd"), obj.status)

    @admin.display(description="took")
    def duration(self, obj: Run) -> str:
        end = obj.finished_at
        if end is None or obj.started_at is None:
            return "—"
        return admin_timeline._fmt_seconds((end - obj.started_at).total_seconds())

    def get_urls(self) -> list[URLPattern]:
        custom = [
            path("<uuid:object_id>/control/<str:action>/", self.admin_site.admin_view(self.control_view),
                 name="runs_run_control"),
            path("<uuid:object_id>/fork/", self.admin_site.admin_view(self.fork_view), name="runs_run_fork"),
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="runs_dashboard"),
            path("<uuid:object_id>/diff/", self.admin_site.admin_view(self.diff_view), name="runs_run_diff"),
        ]
        return custom + super().get_urls()

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """Runs per hour, failure rate, step durations and the apps' panels (runs.dashboard)."""
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {**self.admin_site.each_context(request), "opts": self.opts, "title": "Dashboard",
                   "panels": dashboard.panels(request)}
        return TemplateResponse(request, "admin/runs/dashboard.html", context)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """The observatory page (read-only; changes go through the control buttons)."""
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        try:
            run = Run.objects.select_related("workflow", "workspace").get(pk=object_id)
        except (Run.DoesNotExist, ValueError, ValidationError):
            raise Http404(f"no {self.opts.verbose_name} with id {object_id!r}") from None
        if not self.has_view_or_change_permission(request, run):
            raise PermissionDenied
        timeline = admin_timeline.build(run)
        controls = []
        if self.has_change_permission(request, run):
            if run.status in (RunStatus.QUEUED, RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING,
                              RunStatus.PAUSED):
                controls.append(("cancel", "Cancel"))
            if run.status in (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PENDING):
                controls.append(("pause", "Pause"))
            if run.status == RunStatus.PAUSED:
                controls.append(("resume", "Resume"))
            if run.status == RunStatus.FAILED:
                controls.append(("retry", "Retry"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts, "title": f"Run {run.pk}", "run": run, "timeline": timeline,
            "input_json": admin_timeline.pretty(run.input), "output_json": admin_timeline.pretty(run.output),
            "error_json": admin_timeline.pretty(run.error), "controls": controls,
            "children": list(run.child_runs.all().order_by("created_at")[:50]),
            "forks": list(run.forks.all().order_by("created_at", "id")[:200]),
            "can_fork": run.status in FORKABLE and self.has_fork_permission(request),
            "has_view_permission": True, "original": run,
            **(extra_context or {}),
        }
        return TemplateResponse(request, self.change_form_template, context)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        if not self.has_fork_permission(request):
            actions.pop("fork_runs", None)
        return actions

    @staticmethod
    def has_fork_permission(request: HttpRequest) -> bool:
        # A fork is a new run: the same permission as starting one through the API.
        return bool(request.user.has_perm("runs.add_run"))

    def fork_view(self, request: HttpRequest, object_id: uuid.UUID) -> HttpResponse:
        """GET: choose the step (and an input); POST: ``services.fork_run``, then the new run's page."""
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        run = get_object_or_404(Run.objects.select_related("workflow"), pk=object_id)
        if not self.has_fork_permission(request) or not self.has_view_or_change_permission(request, run):
            raise PermissionDenied
        reached = list(dict.fromkeys(run.steps.filter(parent__isnull=True).order_by("id")
                                     .values_list("name", flat=True)))
        from_step = request.POST.get("from_step", "") if request.method == "POST" else ""
        input_text = request.POST.get("input", "").strip() if request.method == "POST" else ""
        replay = "recorded" if request.method == "POST" and request.POST.get("replay") == "recorded" else "none"
        error = ""
        if request.method == "POST":
            try:
                run_input = json.loads(input_text) if input_text else None
            except json.JSONDecodeError as exc:
                error = f"input is not valid JSON: {exc.msg} at position {exc.pos}"
            else:
                try:
                    fork = services.fork_run(run.pk, from_step=from_step, run_input=run_input,
                                             actor=f"admin:{request.user.get_username()}", replay=replay)
                except (IllegalTransition, services.NotFound, services.StartError) as exc:
                    error = str(exc)
                else:
                    messages.success(request, f"Forked run {run.pk} at step {from_step!r}: this is the new run.")
                    return HttpResponseRedirect(reverse("admin:runs_run_change", args=[fork.pk]))
        context = {
            **self.admin_site.each_context(request), "opts": self.opts, "title": f"Fork run {run.pk}",
            "run": run, "reached": reached, "from_step": from_step, "input_text": input_text,
            "source_input": admin_timeline.pretty(run.input), "error": error,
            "forkable": run.status in FORKABLE, "replay": replay,
        }
        return TemplateResponse(request, "admin/runs/run/fork.html", context, status=400 if error else 200)

    def diff_view(self, request: HttpRequest, object_id: uuid.UUID) -> HttpResponse:
        """GET ?other=RUN_ID: ``services.diff_runs`` drawn as a table, where the runs part first."""
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        run = get_object_or_404(Run, pk=object_id)
        if not self.has_view_or_change_permission(request, run):
            raise PermissionDenied
        other_id = request.GET.get("other", "").strip()
        diff, error = None, ""
        try:
            other = Run.objects.get(pk=other_id)
        except (Run.DoesNotExist, ValueError, ValidationError):
            error = f"other: no run with id {other_id!r}" if other_id else "other: name the run to compare with"
        else:
            if not self.has_view_or_change_permission(request, other):
                raise PermissionDenied
            diff = services.diff_runs(run.pk, other.pk)
            for step in diff["steps"]:
                for d in step["differences"]:
                    d["a_text"], d["b_text"] = admin_timeline.pretty(d["a"]), admin_timeline.pretty(d["b"])
            for d in diff["run_differences"]:
                d["a_text"], d["b_text"] = admin_timeline.pretty(d["a"]), admin_timeline.pretty(d["b"])
        context = {
            **self.admin_site.each_context(request), "opts": self.opts, "title": f"Diff of run {run.pk}",
            "run": run, "other_id": other_id, "diff": diff, "error": error,
        }
        return TemplateResponse(request, "admin/runs/run/diff.html", context, status=400 if error else 200)

    def control_view(self, request: HttpRequest, object_id: uuid.UUID, action: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        run = get_object_or_404(Run, pk=object_id)
        if not self.has_change_permission(request, run):
            raise PermissionDenied
        if action not in CONTROLS:
            messages.error(request, f"unknown action {action!r}")
        else:
            service, verb = CONTROLS[action]
            try:
                service(run.pk, actor=f"admin:{request.user.get_username()}")
                messages.success(request, f"1 run {verb}.")
            except (IllegalTransition, services.NotFound) as exc:
                messages.error(request, f"0 runs {verb}: {exc}")
        return HttpResponseRedirect(reverse("admin:runs_run_change", args=[run.pk]))


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    list_display = ("name", "version", "workspace", "created_at")
    list_filter = ("workspace",)
    search_fields = ("name",)
    readonly_fields = ("workspace", "name", "version", "description", "definition", "content_hash", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "retention_days", "created_at")


class AuditRecordAdmin(admin.ModelAdmin):
    """Audit records (history, LLM calls, tool calls) are evidence: nobody adds or edits them
    here, and only a superuser may delete them (to purge); others get no "Delete selected"."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)


@admin.register(RunEvent)
class RunEventAdmin(AuditRecordAdmin):
    list_display = ("created_at", "run_id", "kind", "step_key", "actor", "message")
    list_filter = ("kind",)
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    readonly_fields = ("run", "kind", "step_key", "actor", "message", "data", "created_at")

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[RunEvent],
                           search_term: str) -> tuple[QuerySet[RunEvent], bool]:
        try:
            return queryset.filter(run_id=uuid.UUID(search_term.strip())), False
        except ValueError:
            return queryset, False

    search_fields = ("run__id",)
    search_help_text = "A run id (UUID)."


# Step executions: read-only, linked back to their run's observatory page.
@admin.register(StepExecution)
class StepExecutionAdmin(admin.ModelAdmin):
    list_display = ("key", "type", "status", "run_link", "attempt", "failures", "recovery_count", "started_at",
                    "finished_at")
    list_filter = ("status", "type")
    search_fields = ("run__id",)
    search_help_text = "A run id (UUID)."
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    list_per_page = 100
    readonly_fields = ["conversation", *(f.name for f in StepExecution._meta.fields)]

    @admin.display(description="conversation")
    def conversation(self, obj: StepExecution) -> str:
        """What the step type's app draws for it (an llm step's transcript), else nothing."""
        panel = STEP_PANELS.get(obj.type)
        return panel(obj) if panel is not None else "—"

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[StepExecution],
                           search_term: str) -> tuple[QuerySet[StepExecution], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(run_id=uuid.UUID(term)), False
        except ValueError:
            return queryset.filter(key=term), False

    @admin.display(description="run")
    def run_link(self, obj: StepExecution) -> str:
        return format_html('<a href="{}#step-{}">{}</a>', reverse("admin:runs_run_change", args=[obj.run_id]),
                           obj.key, str(obj.run_id)[:8])

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
