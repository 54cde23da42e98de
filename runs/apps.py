from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import beat_init, worker_process_shutdown
        from django.conf import settings

        from . import metrics
        from .engine import recovery, sweeper, tasks, tracing  # noqa: F401 - tasks: register the Celery tasks
        from .services import retention, retry
        from .signals import run_status_changed

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
        # Traces (OTEL_EXPORTER_OTLP_ENDPOINT): a run's span when it finishes; spans flushed at exit.
        run_status_changed.connect(tracing.on_run_status_changed, weak=False, dispatch_uid="stevora-tracing")
        worker_process_shutdown.connect(lambda **_: tracing.flush(), weak=False, dispatch_uid="stevora-trace-flush")


def _start_sweeper(**_: object) -> None:
    from .engine import sweeper

    sweeper.start()
