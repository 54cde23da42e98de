"""Admin: providers and chains to configure, circuit breakers to watch and reset, LLM calls to read.

Keys never appear here: a provider names the environment variable that holds its key.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from runs.admin import AuditRecordAdmin

from . import breaker
from .models import LLMCall, Provider, ProviderChain, ProviderHealth, ToolCall
from .registry import api_key


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "model", "enabled", "priority", "api_key_env", "key_present",
                    "input_price_per_mtok", "output_price_per_mtok", "circuit")
    list_filter = ("kind", "enabled")
    search_fields = ("name", "model")
    actions = ["reset_circuit"]

    @admin.display(boolean=True, description="key set")
    def key_present(self, obj: Provider) -> bool:
        return bool(api_key(obj)) if obj.api_key_env else True

    @admin.display(description="circuit")
    def circuit(self, obj: Provider) -> str:
        health = ProviderHealth.objects.filter(pk=obj.pk).first()
        return health.state if health else "closed"

    @admin.action(description="Close the circuit breaker of the selected providers")
    def reset_circuit(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        for provider in queryset:
            breaker.reset(provider)
        self.message_user(request, f"{queryset.count()} circuit(s) closed.", messages.SUCCESS)


@admin.register(ProviderChain)
class ProviderChainAdmin(admin.ModelAdmin):
    list_display = ("name", "__str__", "updated_at")


@admin.register(ProviderHealth)
class ProviderHealthAdmin(admin.ModelAdmin):
    list_display = ("provider", "state", "consecutive_failures", "open_until", "changed_at")
    readonly_fields = ("provider", "state", "consecutive_failures", "open_until", "probe_until", "last_error",
                       "changed_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(LLMCall)
class LLMCallAdmin(AuditRecordAdmin):
    # Eight narrow columns: the list fits a 1400 px window next to the filters.
    list_display = ("id", "when", "provider_model", "outcome", "round_try", "tokens", "cost_usd", "latency",
                    "step_link")
    list_display_links = ("id",)
    list_filter = ("status", "provider_name", "kind")
    search_fields = ("provider_name", "model", "error", "run__id")
    raw_id_fields = ("step", "run", "provider")
    date_hierarchy = "started_at"
    list_select_related = ("step",)

    @admin.display(description="started", ordering="started_at")
    def when(self, obj: LLMCall) -> str:
        return f"{obj.started_at:%m-%d %H:%M:%S}"

    @admin.display(description="provider · model", ordering="provider_name")
    def provider_model(self, obj: LLMCall) -> str:
        return f"{obj.provider_name} · {obj.model}"

    @admin.display(description="status", ordering="status")
    def outcome(self, obj: LLMCall) -> str:
        return f"{obj.status} ({obj.http_status})" if obj.http_status and obj.status != "succeeded" else obj.status

    @admin.display(description="round/try")
    def round_try(self, obj: LLMCall) -> str:
        return f"{obj.round}/{obj.try_number}"

    @admin.display(description="tokens in/out")
    def tokens(self, obj: LLMCall) -> str:
        return f"{obj.input_tokens}/{obj.output_tokens}"

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, obj: LLMCall) -> str:
        return f"{obj.latency_ms:.0f} ms" if obj.latency_ms is not None else "—"

    @admin.display(description="step")
    def step_link(self, obj: LLMCall) -> str:
        if obj.step is None:
            return "—"
        return format_html('<a href="{}#step-{}">{}</a>', reverse("admin:runs_run_change", args=[obj.step.run_id]),
                           obj.step.key, obj.step.key)


@admin.register(ToolCall)
class ToolCallAdmin(AuditRecordAdmin):
    list_display = ("id", "step", "round", "tool", "status", "executions", "started_at", "finished_at")
    list_filter = ("status", "tool")
    raw_id_fields = ("step",)
