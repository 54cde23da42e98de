from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import beat_init
        from django.conf import settings

        from . import metrics
        from .engine import recovery, sweeper, tasks  # noqa: F401 - tasks: register the Celery tasks
        from .services import retention, retry

        def reconcile_every() -> float:
            interval = float(settings.STEVORA["RECONCILE_SECONDS"])
            # Embedded, the sweep is also how runs started by other processes are found.
            return min(interval, 0.5) if settings.IS_EMBEDDED_BROKER else interval

        sweeper.register("reconcile", recovery.sweep, every=reconcile_every)
        retry.register()
        metrics.register("runs", metrics.run_families)
        sweeper.register("retention", retention.sweep,
                         every=lambda: float(settings.STEVORA["RETENTION_SWEEP_SECONDS"]))
        # Beat's process hosts the sweeps (never the step queue: a backlog must not delay them).
        beat_init.connect(_start_sweeper, weak=False, dispatch_uid="stevora-sweeper")


def _start_sweeper(**_: object) -> None:
    from .engine import sweeper

    sweeper.start()
