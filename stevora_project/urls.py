"""URL routing."""

from django.contrib import admin
from django.urls import include, path

from api.urls import urlpatterns as api_pages
from api.urls import v1 as api_v1

from .health import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include((api_v1, "v1"), namespace="v1")),
    path("api/", include((api_pages, "api"), namespace="api")),
]

handler404 = "api.errors.not_found"
