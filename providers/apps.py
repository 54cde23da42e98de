from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    name = "providers"
    verbose_name = "LLM providers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from steps import types

        from .step_type import LLMType

        types.register(LLMType())
