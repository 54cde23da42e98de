import logging

from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import beat_init, worker_process_init, worker_process_shutdown, worker_shutdown
        from django.conf import settings

        from . import metrics
        from .engine import recovery, sweeper, tasks, tracing, workers  # noqa: F401 - tasks: register the Celery tasks
        from .services import retention, retry
        from .signals import run_status_changed

        def reconcile_every() -> float:
            interval = float(settings.STEVORA["RECONCILE_SECONDS"])
            # Embedded, the sweep is also how runs started by other processes are found.
            return min(interval, 0.5) if settings.IS_EMBEDDED_BROKER else interval

        sweeper.register("reconcile", recovery.sweep, every=reconcile_every)
        sweeper.register("workers", workers.reap, every=lambda: float(settings.STEVORA["WORKER_CHECK_SECONDS"]))
        retry.register()
        metrics.register("runs", metrics.run_families)
        sweeper.register("retention", retention.sweep,
                         every=lambda: float(settings.STEVORA["RETENTION_SWEEP_SECONDS"]))
        # Beat's process hosts the sweeps (never the step queue: a backlog must not delay them).
        beat_init.connect(_start_sweeper, weak=False, dispatch_uid="stevora-sweeper")
        # Each process that runs steps (a prefork child, or the solo pool's process) registers
        # itself and holds its liveness lock until it exits.
        worker_process_init.connect(_register_worker, weak=False, dispatch_uid="stevora-worker-register")
        worker_process_shutdown.connect(_unregister_worker, weak=False, dispatch_uid="stevora-worker-unregister")
        worker_shutdown.connect(_unregister_worker, weak=False, dispatch_uid="stevora-worker-shutdown")
        # Traces (OTEL_EXPORTER_OTLP_ENDPOINT): a run's span when it finishes; spans flushed at exit.
        run_status_changed.connect(tracing.on_run_status_changed, weak=False, dispatch_uid="stevora-tracing")
        worker_process_shutdown.connect(lambda **_: tracing.flush(), weak=False, dispatch_uid="stevora-trace-flush")


def _start_sweeper(**_: object) -> None:
    from .engine import sweeper

    sweeper.start()


def _register_worker(**_: object) -> None:
    from django.conf import settings

    from .engine import workers

    try:
        workers.register("embedded" if settings.IS_EMBEDDED_BROKER else "celery")
    except Exception:  # the registry speeds recovery up; a worker that cannot register still works
        logging.getLogger("stevora.workers").exception("could not register this worker")


def _unregister_worker(**_: object) -> None:
    from .engine import workers

    try:
        workers.unregister()
    except Exception:  # exiting anyway: the lock goes with the process
        logging.getLogger("stevora.workers").exception("could not unregister this worker")
