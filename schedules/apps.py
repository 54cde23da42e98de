from django.apps import AppConfig


class SchedulesConfig(AppConfig):
    name = "schedules"
    verbose_name = "Schedules"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings
        from django.db.models.signals import post_save

        from runs.engine import sweeper
        from runs.models import Workflow

        from .services import fire_due_schedules, workflow_stored

        # A new workflow version replaces the schedules of the one before, in the same
        # transaction that stores it (runs.services.load_workflow).
        post_save.connect(workflow_stored, sender=Workflow, dispatch_uid="schedules-sync")
        sweeper.register("schedules", fire_due_schedules,
                         every=lambda: float(settings.STEVORA.get("SCHEDULE_SWEEP_SECONDS", 1.0)))
