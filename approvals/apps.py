from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Approvals"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .api import register_api_errors
        from .step_type import register_approval_type

        register_approval_type()
        register_api_errors()
