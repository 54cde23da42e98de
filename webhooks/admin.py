"""Webhook subscriptions and the delivery log."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .delivery import retry_now
from .models import EventType, WebhookDelivery, WebhookSubscription


class SubscriptionForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")
    events = forms.MultipleChoiceField(choices=EventType.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = WebhookSubscription
        fields = ["workspace", "url", "events", "description", "active", "secret"]


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(admin.ModelAdmin):
    form = SubscriptionForm
    list_display = ["url", "workspace", "event_list", "active", "created_at"]
    list_filter = ["active", "workspace"]
    search_fields = ["url", "description"]

    @admin.display(description="events")
    def event_list(self, sub: WebhookSubscription) -> str:
        return ", ".join(sub.events or [])


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "event", "url", "status", "attempts", "response_code", "next_attempt_at",
                    "short_error"]
    list_filter = ["status", "event", "workspace"]
    search_fields = ["url", "id", "error"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    actions = ["retry_deliveries"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WebhookDelivery | None = None) -> bool:
        return False

    @admin.display(description="error")
    def short_error(self, delivery: WebhookDelivery) -> str:
        return delivery.error[:80]

    @admin.action(description="Retry the selected deliveries now", permissions=["view"])
    def retry_deliveries(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        count = retry_now(list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{count} deliver{'y' if count == 1 else 'ies'} queued again.")
