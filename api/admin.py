"""API keys in the admin: create (the key is shown once), list, revoke.

Who may own a new key follows ``api.services.may_create_key_for``: yourself, unless you
are a superuser or hold ``api.add_apikey_for_others`` (and only superusers mint keys for
superusers). The plaintext is rendered once, in the response to the add form, with
``Cache-Control: no-store``; it is never put in a message, the session or a log.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.cache import patch_cache_control

from .models import ApiKey, revoke
from .services import ApiKeyError, check_key_owner, check_rate, create_key


class ApiKeyForm(forms.ModelForm):
    actor: Any = None  # set per request by ApiKeyAdmin.get_form

    class Meta:
        model = ApiKey
        fields = ["name", "workspace", "user", "rate"]

    def clean_rate(self) -> str:
        try:
            return check_rate(self.cleaned_data.get("rate") or "")
        except ApiKeyError as exc:
            raise forms.ValidationError(str(exc).split(": ", 1)[-1]) from None

    def clean_user(self) -> Any:
        owner = self.cleaned_data.get("user")
        if owner is not None and self.actor is not None and self.instance.pk is None:
            try:
                check_key_owner(self.actor, owner)
            except ApiKeyError as exc:
                raise forms.ValidationError(str(exc).split(": ", 1)[-1]) from None
        return owner


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

    def get_form(self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False,
                 **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        form.actor = request.user  # type: ignore[attr-defined]  # a fresh class per call: safe per request
        return form

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "user":
            # Offer only the owners this user may create keys for (the form checks again).
            actor: Any = request.user
            users = get_user_model().objects.all()
            if not actor.is_superuser:
                users = (users.filter(is_superuser=False) if actor.has_perm("api.add_apikey_for_others")
                         else users.filter(pk=actor.pk))
            kwargs["queryset"] = users
            kwargs.setdefault("initial", actor.pk)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        new = create_key(name=obj.name, user=obj.user, workspace=obj.workspace, rate=obj.rate, actor=request.user)
        obj.pk = new.key.pk
        obj.prefix = new.key.prefix
        obj.secret_hash = new.key.secret_hash
        # Only for response_add of this same request: the plaintext is rendered once, then gone.
        request.stevora_new_key = new.plaintext  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        plaintext = getattr(request, "stevora_new_key", None)
        if plaintext is None:
            return super().response_add(request, obj, post_url_continue)
        context = {**self.admin_site.each_context(request), "title": "API key created", "key": obj,
                   "plaintext": plaintext, "opts": self.opts}
        response = TemplateResponse(request, "admin/api/apikey/created.html", context)
        patch_cache_control(response, no_store=True)  # the secret must not stay in any cache
        return response

    @admin.action(description="Revoke the selected keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        done = sum(1 for key in queryset if revoke(key))
        self.message_user(request, f"Revoked {done} key(s).")
