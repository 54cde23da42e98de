from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    name = "providers"
    verbose_name = "LLM providers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from runs import admin_timeline
        from steps import types

        from . import transcript
        from .step_type import LLMType

        types.register(LLMType())
        admin_timeline.register_step_panel("llm", transcript.render)
