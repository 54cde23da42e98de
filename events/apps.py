from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "events"
    verbose_name = "External events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings
        from django.db.models.signals import post_save

        from runs.engine import sweeper
        from runs.models import Workflow

        from .api import register_api_errors
        from .flow import fire_due_debounces
        from .services import purge_expired_events
        from .step_type import register_event_type
        from .triggers import workflow_stored

        register_event_type()
        # A new workflow version's event triggers replace the old ones, in the transaction
        # that stores it (runs.services.load_workflow).
        post_save.connect(workflow_stored, sender=Workflow, dispatch_uid="events-trigger-sync")
        register_api_errors()
        # Debounced bursts whose quiet period is over start their run (events.flow).
        sweeper.register("event-debounce", fire_due_debounces,
                         every=lambda: float(settings.STEVORA.get("SCHEDULE_SWEEP_SECONDS", 1.0)))
        sweeper.register("events-purge", purge_expired_events,
                         every=lambda: float(settings.STEVORA["EVENT_PURGE_SECONDS"]))
