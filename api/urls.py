"""``/api/v1/`` and the public schema pages (``/api/schema/``, ``/api/docs/``, ``/api/redoc/``)."""

from __future__ import annotations

from typing import Any

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from approvals.api import ApprovalDecide, ApprovalList
from events.api import EventDeliver
from providers.api import CostSummary
from runs import api as runs_api

# The schema and its pages need no key (they describe the API, they do not reveal data).
PUBLIC: dict[str, Any] = {"authentication_classes": [], "permission_classes": [AllowAny], "throttle_classes": []}


RUN = "runs/<uuid:run_id>/"

v1 = [
    path("definitions/", runs_api.DefinitionListCreate.as_view(), name="definitions"),
    path("definitions/<str:name>/", runs_api.DefinitionDetail.as_view(), name="definition"),
    path("definitions/<str:name>/versions/<int:version>/", runs_api.DefinitionVersion.as_view(),
         name="definition-version"),
    path("runs/", runs_api.RunListCreate.as_view(), name="runs"),
    path(RUN, runs_api.RunDetail.as_view(), name="run"),
    path(RUN + "cancel/", runs_api.RunCancel.as_view(), name="run-cancel"),
    path(RUN + "pause/", runs_api.RunPause.as_view(), name="run-pause"),
    path(RUN + "resume/", runs_api.RunResume.as_view(), name="run-resume"),
    path(RUN + "retry/", runs_api.RunRetry.as_view(), name="run-retry"),
    path(RUN + "fork/", runs_api.RunFork.as_view(), name="run-fork"),
    path(RUN + "history/", runs_api.RunHistory.as_view(), name="run-history"),
    path(RUN + "cost/", runs_api.RunCost.as_view(), name="run-cost"),
    re_path(r"^runs/(?P<run_id>[0-9a-f-]{36})/steps/(?P<step_key>[^/]+)/$", runs_api.StepDetail.as_view(),
            name="step"),
    path("events/", EventDeliver.as_view(), name="events"),
    path("approvals/", ApprovalList.as_view(), name="approvals"),
    path("approvals/<int:approval_id>/decide/", ApprovalDecide.as_view(), name="approval-decide"),
    path("cost/", CostSummary.as_view(), name="cost"),
]

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(**PUBLIC), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema", **PUBLIC), name="swagger-ui"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api:schema", **PUBLIC), name="redoc"),
]

