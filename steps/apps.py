from django.apps import AppConfig


class StepsConfig(AppConfig):
    name = "steps"
    verbose_name = "Steps"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import handlers
        from .builtin_types import register_builtin_types

        register_builtin_types()
        handlers.discover()
