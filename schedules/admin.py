"""Schedules in the admin: listed with their next fire time, paused and resumed by action."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from runs.admin import CappedCountPaginator

from . import services
from .models import Schedule, ScheduleTick


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    list_display = ("id", "workflow_name", "trigger_index", "timing", "catch_up", "status", "next_fire_at",
                    "last_tick_at", "workspace")
    list_filter = ("paused", "kind", "catch_up")
    search_fields = ("workflow_name",)
    ordering = ("next_fire_at",)
    actions = ["pause", "resume"]
    readonly_fields = ("workspace", "workflow", "workflow_name", "trigger_index", "kind", "cron", "timezone",
                       "every_seconds", "catch_up", "input", "paused", "next_fire_at", "last_tick_at", "created_at",
                       "updated_at")

    @admin.display(description="schedule")
    def timing(self, obj: Schedule) -> str:
        return obj.describe()

    @admin.display(description="status", boolean=False, ordering="paused")
    def status(self, obj: Schedule) -> str:
        return "paused" if obj.paused else "active"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # schedules come from definitions (triggers:)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Pause the selected schedules", permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        actor = request.user.get_username()
        changed = sum(services.pause_schedule(s.pk, actor=actor)[1] for s in queryset)
        self.message_user(request, f"Paused {changed} schedule(s).", messages.SUCCESS)

    @admin.action(description="Resume the selected schedules (from their next tick after now)",
                  permissions=["change"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        actor = request.user.get_username()
        changed = sum(services.resume_schedule(s.pk, actor=actor)[1] for s in queryset)
        self.message_user(request, f"Resumed {changed} schedule(s).", messages.SUCCESS)


@admin.register(ScheduleTick)
class ScheduleTickAdmin(admin.ModelAdmin):
    list_display = ("id", "schedule", "tick", "run", "error", "created_at")
    list_select_related = ("schedule",)
    raw_id_fields = ("schedule", "run")
    show_full_result_count = False
    paginator = CappedCountPaginator

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
