from django.apps import AppConfig
from django.db.models import signals


class ProvidersConfig(AppConfig):
    name = "providers"
    verbose_name = "LLM providers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from runs import admin_timeline, dashboard, metrics
        from runs.cli import register_step_detail
        from runs.engine import tracing
        from runs.services import register_step_differ
        from steps import types

        from . import dashboard as provider_dashboard
        from . import diff, tool_decisions, transcript
        from . import metrics as provider_metrics
        from . import tracing as provider_tracing
        from .models import Provider
        from .registry import on_provider_changed
        from .step_type import LLMType
        from .terminal import agent_lines

        types.register(LLMType())
        # This process's copies of provider rows (providers.registry) are dropped when it edits one.
        signals.post_save.connect(on_provider_changed, sender=Provider, dispatch_uid="providers-cache-save")
        signals.post_delete.connect(on_provider_changed, sender=Provider, dispatch_uid="providers-cache-delete")
        metrics.register("providers", provider_metrics.families)
        dashboard.register_panel("llm-cost", provider_dashboard.cost_panel, order=30)
        tracing.register_attempt_spans("providers", provider_tracing.attempt_spans)
        # Tool calls waiting in the approval inbox: approvals resumes them through this registry.
        tool_decisions.register()
        # show_run draws an llm step's model turns, tool calls and fallbacks under the timeline.
        register_step_detail("llm", agent_lines)
        admin_timeline.register_step_panel("llm", transcript.render)
        # diff_runs compares two llm steps' model conversations and tool calls too.
        register_step_differ("llm", diff.differ)
