"""URL routing: the admin, ``/api/v1/`` (each app's views) and the schema pages.

This is the one place that knows every app's views; the apps and ``api`` (the shared
API plumbing) import nothing from here.
"""

from django.contrib import admin
from django.urls import include, path, re_path

from api import runs as runs_api
from api.run_stream import RunStream
from api.urls import urlpatterns as api_pages
from approvals.api import ApprovalBulkDecide, ApprovalDecide, ApprovalList
from events.api import EventDeliver
from providers.api import CostSummary, RunCost
from schedules.api import ScheduleList, SchedulePause, ScheduleResume

from .health import healthz
from .metrics import metrics

RUN = "runs/<uuid:run_id>/"

api_v1 = [
    path("definitions/", runs_api.DefinitionListCreate.as_view(), name="definitions"),
    path("definitions/<str:name>/", runs_api.DefinitionDetail.as_view(), name="definition"),
    path("definitions/<str:name>/versions/<int:version>/", runs_api.DefinitionVersion.as_view(),
         name="definition-version"),
    path("runs/", runs_api.RunListCreate.as_view(), name="runs"),
    path("runs/batch/", runs_api.RunBatchStart.as_view(), name="runs-batch"),
    path(RUN, runs_api.RunDetail.as_view(), name="run"),
    path(RUN + "cancel/", runs_api.RunCancel.as_view(), name="run-cancel"),
    path(RUN + "pause/", runs_api.RunPause.as_view(), name="run-pause"),
    path(RUN + "resume/", runs_api.RunResume.as_view(), name="run-resume"),
    path(RUN + "retry/", runs_api.RunRetry.as_view(), name="run-retry"),
    path(RUN + "fork/", runs_api.RunFork.as_view(), name="run-fork"),
    path(RUN + "history/", runs_api.RunHistory.as_view(), name="run-history"),
    path(RUN + "diff/<uuid:other_id>/", runs_api.RunDiff.as_view(), name="run-diff"),
    path(RUN + "stream/", RunStream.as_view(), name="run-stream"),
    path(RUN + "cost/", RunCost.as_view(), name="run-cost"),
    re_path(r"^runs/(?P<run_id>[0-9a-f-]{36})/steps/(?P<step_key>[^/]+)/$", runs_api.StepDetail.as_view(),
            name="step"),
    path("events/", EventDeliver.as_view(), name="events"),
    path("approvals/", ApprovalList.as_view(), name="approvals"),
    path("approvals/decide/", ApprovalBulkDecide.as_view(), name="approvals-decide-many"),
    path("approvals/<int:approval_id>/decide/", ApprovalDecide.as_view(), name="approval-decide"),
    path("cost/", CostSummary.as_view(), name="cost"),
    path("schedules/", ScheduleList.as_view(), name="schedules"),
    path("schedules/<int:schedule_id>/pause/", SchedulePause.as_view(), name="schedule-pause"),
    path("schedules/<int:schedule_id>/resume/", ScheduleResume.as_view(), name="schedule-resume"),
]

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/v1/", include((api_v1, "v1"), namespace="v1")),
    path("api/", include((api_pages, "api"), namespace="api")),
]

# Under /api/ Django's own answers use the API's JSON error body too (HTML elsewhere).
handler400 = "api.errors.bad_request"
handler403 = "api.errors.permission_denied"
handler404 = "api.errors.not_found"
handler500 = "api.errors.server_error"
