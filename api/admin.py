"""API keys in the admin: create (the key is shown once), list, revoke."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import ApiKey, revoke
from .services import ApiKeyError, check_rate, create_key


class ApiKeyForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["name", "workspace", "user", "rate"]

    def clean_rate(self) -> str:
        try:
            return check_rate(self.cleaned_data.get("rate") or "")
        except ApiKeyError as exc:
            raise forms.ValidationError(str(exc).split(": ", 1)[-1]) from None


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ["name", "shown_prefix", "workspace", "user", "rate", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["workspace", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "user__username"]
    readonly_fields = ["shown_prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke_keys"]

    @admin.display(description="key")
    def shown_prefix(self, key: ApiKey) -> str:
        return f"stv_{key.prefix}_…"

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        if obj is None:
            return ["name", "workspace", "user", "rate"]
        return ["name", "shown_prefix", "workspace", "user", "rate", "created_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is None:
            return []
        # A key's owner and workspace are what it grants; change them by issuing a new key.
        return ["shown_prefix", "workspace", "user", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        new = create_key(name=obj.name, user=obj.user, workspace=obj.workspace, rate=obj.rate)
        obj.pk = new.key.pk
        obj.prefix = new.key.prefix
        obj.secret_hash = new.key.secret_hash
        messages.warning(request, f"API key created: {new.plaintext} — copy it now; it is not stored and "
                                  "will not be shown again.")

    @admin.action(description="Revoke the selected keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        done = sum(1 for key in queryset if revoke(key))
        self.message_user(request, f"Revoked {done} key(s).")
