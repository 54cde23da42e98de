"""Step executions in the admin: read-only, linked back to their run's observatory page."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from runs.admin import CappedCountPaginator
from runs.admin_timeline import STEP_PANELS

from .models import StepExecution


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
