from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "events"
    verbose_name = "External events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from runs.engine import sweeper

        from .api import register_api_errors
        from .services import purge_expired_events
        from .step_type import register_event_type

        register_event_type()
        register_api_errors()
        sweeper.register("events-purge", purge_expired_events,
                         every=lambda: float(settings.STEVORA["EVENT_PURGE_SECONDS"]))
