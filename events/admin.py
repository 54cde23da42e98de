"""External events and the steps waiting for them, read-only in the admin."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from runs.admin import CappedCountPaginator

from .models import Event, EventMatch, EventTrigger, EventTriggering, EventWait, PendingDebounce


class ReadOnly(admin.ModelAdmin):
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Event)
class EventAdmin(ReadOnly):
    list_display = ("id", "name", "key", "event_id", "received_at", "expires_at")
    list_filter = ("name",)
    search_fields = ("=key", "=event_id")
    search_help_text = "An event key or event id (exact)."
    readonly_fields = ("workspace", "name", "key", "payload", "event_id", "received_at", "expires_at")


class TriggeringInline(admin.TabularInline):
    model = EventTriggering
    fields = ("workflow_name", "trigger_index", "flow_key", "outcome", "reason", "run_id", "at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


EventAdmin.inlines = [TriggeringInline]


@admin.register(EventTriggering)
class EventTriggeringAdmin(ReadOnly):
    """What each debounced or rate-limited trigger did with each event (started, debounced, skipped)."""

    list_display = ("id", "event", "workflow_name", "trigger_index", "flow_key", "outcome", "reason", "at")
    list_filter = ("outcome",)
    search_fields = ("=flow_key", "workflow_name")


@admin.register(PendingDebounce)
class PendingDebounceAdmin(ReadOnly):
    list_display = ("id", "workflow_name", "trigger_index", "flow_key", "events", "first_at", "fire_at", "event")


@admin.register(EventWait)
class EventWaitAdmin(ReadOnly):
    list_display = ("id", "name", "key", "match", "run", "step", "created_at")
    list_filter = ("name",)
    search_fields = ("=key",)


@admin.register(EventMatch)
class EventMatchAdmin(ReadOnly):
    list_display = ("id", "event", "run", "step", "step_name", "matched_at")


@admin.register(EventTrigger)
class EventTriggerAdmin(ReadOnly):
    list_display = ("id", "workflow_name", "trigger_index", "name", "key", "condition", "workspace")
    list_filter = ("name",)
    search_fields = ("workflow_name", "name")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # triggers come from definitions
