"""What a /metrics scrape, the admin dashboard and a retention purge cost on a large history.

Usage (a scratch PostgreSQL database, never a shared one; it is filled with rows):

    createdb stevora_bench_obs
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stevora_bench_obs SECRET_KEY=bench \\
        .venv/bin/python bench/observability.py --old 200000 --recent 2000 --purge 20000

Seeds OLD finished runs (60 days ago) and RECENT runs (in the last hour), three task steps
each, with SQL; then prints milliseconds per scrape (``runs.metrics.render``) and per
dashboard (its panels), the plan of the scrape's main query, and the purge rate (runs
and rows per second) of ``purge_runs --older-than 30`` over PURGE old runs. The scrape
should cost about the same with 0 or 200,000 old runs: that is the point of the windows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stevora_project.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import RequestFactory  # noqa: E402
from django.utils import timezone  # noqa: E402

from runs import dashboard, metrics  # noqa: E402
from runs.models import Run, Workflow, Workspace  # noqa: E402
from runs.services import purge_runs  # noqa: E402

SEED_RUNS = """
INSERT INTO runs_run (id, workflow_name, status, input, created_by, created_at, started_at, finished_at,
                      updated_at, input_tokens, output_tokens, cost_usd, workflow_id, workspace_id, forked_from_step)
SELECT gen_random_uuid(), %(name)s, %(status)s, '{}', '', t, t, t + interval '2 seconds', t, 0, 0, 0, %(wf)s, %(ws)s, ''
FROM (SELECT now() - %(age)s::interval - (g * interval '10 milliseconds') AS t
      FROM generate_series(1, %(n)s) g) s
RETURNING id
"""
SEED_STEPS = """
INSERT INTO steps_stepexecution (key, name, type, branch, visit, status, attempt, failures, max_attempts, state,
                                 lease_owner, recovery_count, created_at, started_at, finished_at, updated_at,
                                 input_tokens, output_tokens, cost_usd, run_id)
SELECT k, k, 'task', '', 1, 'completed', 1, 0, 1, '{}', '', 0, r.created_at, r.created_at,
       r.created_at + (random() * interval '1 second'), r.created_at, 0, 0, 0, r.id
FROM runs_run r CROSS JOIN (VALUES ('a'), ('b'), ('c')) AS keys(k)
WHERE r.workflow_name = %(name)s
"""


def seed(old: int, recent: int) -> None:
    ws = Workspace.default()
    wf, _ = Workflow.objects.get_or_create(workspace=ws, name="bench-obs", version=1,
                                           defaults={"definition": {"name": "bench-obs", "steps": []},
                                                     "content_hash": "bench-obs"})
    with connection.cursor() as cursor:
        for name, n, age, status in (("bench-old", old, "60 days", "completed"),
                                     ("bench-recent", recent, "1 minute", "completed")):
            if n:
                cursor.execute(SEED_RUNS, {"name": name, "status": status, "wf": wf.pk, "ws": ws.pk, "age": age,
                                           "n": n})
                cursor.execute(SEED_STEPS, {"name": name})
        cursor.execute("ANALYZE")


def ms_per(fn: object, rounds: int = 5) -> float:
    fn()  # type: ignore[operator]
    start = time.perf_counter()
    for _ in range(rounds):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - start) / rounds * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=int, default=0, help="old finished runs to add (60 days ago)")
    parser.add_argument("--recent", type=int, default=0, help="runs to add in the last minute")
    parser.add_argument("--purge", type=int, default=0, help="purge this many old runs and time it")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("run against a scratch PostgreSQL database (DATABASE_URL)")
    seed(args.old, args.recent)
    print(f"{Run.objects.count()} runs, {Run.objects.filter(workflow_name='bench-recent').count()} recent")
    print(f"/metrics render: {ms_per(metrics.render):8.1f} ms")
    request = RequestFactory().get("/admin/runs/run/dashboard/")
    request.user = User(is_superuser=True, is_staff=True, is_active=True)
    print(f"dashboard panels: {ms_per(lambda: dashboard.panels(request)):8.1f} ms")
    since = metrics.window().since
    with connection.cursor() as cursor:
        sql, params = (Run.objects.filter(status__in=["pending", "running", "waiting", "paused", "completed",
                                                      "failed", "cancelled"], created_at__gte=since)
                       .values("workflow_name", "status").query.sql_with_params())
        cursor.execute("EXPLAIN " + sql, params)
        print("plan of the recent-runs query:")
        for (line,) in cursor.fetchall():
            print("   ", line)
    if args.purge:
        cutoff_days = 30
        # Only PURGE of the old runs: move the rest inside the cut-off for this measurement.
        keep = list(Run.objects.filter(workflow_name="bench-old").order_by("finished_at")
                    .values_list("pk", flat=True)[args.purge:])
        spared = Run.objects.filter(pk__in=keep).update(finished_at=timezone.now()) if keep else 0
        start = time.perf_counter()
        report = purge_runs(older_than_days=cutoff_days)
        seconds = time.perf_counter() - start
        rows = sum(report.counts.values())
        print(f"purge: {report.runs} runs, {rows} rows in {report.batches} batches, {seconds:.1f} s: "
              f"{report.runs / seconds:.0f} runs/s, {rows / seconds:.0f} rows/s ({spared} old runs spared)")


if __name__ == "__main__":
    main()
