from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Approvals"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from runs import admin_timeline, dashboard, metrics

        from . import dashboard as approval_dashboard
        from . import metrics as approval_metrics
        from . import panel
        from .api import register_api_errors
        from .step_type import register_approval_type

        register_approval_type()
        metrics.register("approvals", approval_metrics.families)
        dashboard.register_panel("approvals", approval_dashboard.oldest_waiting_panel, order=40)
        register_api_errors()
        admin_timeline.register_step_panel("approval", panel.render)
