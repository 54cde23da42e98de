from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from runs import metrics
        from runs.engine import sweeper
        from runs.services import register_purger

        from . import metrics as webhook_metrics
        from . import receivers, tasks  # noqa: F401 - connect the signals, register the Celery tasks
        from .delivery import purge_for_runs
        from .sweeps import sweep

        receivers.connect()
        metrics.register("webhooks", webhook_metrics.families)
        sweeper.register("webhooks", sweep, every=lambda: float(settings.STEVORA["WEBHOOK_SWEEP_SECONDS"]))
        # Retention: a purged run's settled deliveries go with it (they name its history rows).
        register_purger("webhooks.WebhookDelivery", purge_for_runs)
