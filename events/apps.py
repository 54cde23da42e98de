from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "events"
    verbose_name = "External events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import tasks  # noqa: F401 - register the Celery task
        from .api import register_api_errors
        from .step_type import register_event_type

        register_event_type()
        register_api_errors()
