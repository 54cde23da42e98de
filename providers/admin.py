"""Admin: providers and chains to configure, circuit breakers to watch and reset, LLM calls to read.

Keys never appear here: a provider names the environment variable that holds its key.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

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


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(LLMCall)
class LLMCallAdmin(ReadOnlyAdmin):
    list_display = ("id", "started_at", "provider_name", "model", "status", "http_status", "round", "try_number",
                    "input_tokens", "output_tokens", "cost_usd", "latency_ms", "step")
    list_filter = ("status", "provider_name", "kind")
    search_fields = ("provider_name", "model", "error", "run__id")
    raw_id_fields = ("step", "run", "provider")
    date_hierarchy = "started_at"
    list_select_related = ("step",)


@admin.register(ToolCall)
class ToolCallAdmin(ReadOnlyAdmin):
    list_display = ("id", "step", "round", "tool", "status", "executions", "started_at", "finished_at")
    list_filter = ("status", "tool")
    raw_id_fields = ("step",)
