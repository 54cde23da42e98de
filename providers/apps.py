from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    name = "providers"
    verbose_name = "LLM providers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from runs import admin_timeline
        from runs.cli import register_step_detail
        from runs.services import register_step_differ
        from steps import types

        from . import diff, tool_decisions, transcript
        from .step_type import LLMType
        from .terminal import agent_lines

        types.register(LLMType())
        # Tool calls waiting in the approval inbox: approvals resumes them through this registry.
        tool_decisions.register()
        # show_run draws an llm step's model turns, tool calls and fallbacks under the timeline.
        register_step_detail("llm", agent_lines)
        admin_timeline.register_step_panel("llm", transcript.render)
        # diff_runs compares two llm steps' model conversations and tool calls too.
        register_step_differ("llm", diff.differ)
