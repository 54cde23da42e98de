"""Scale: many runs parked on approvals, their lists, bulk decisions, batch starts (issue 11).

Usage (PostgreSQL and Redis on 127.0.0.1; a scratch database, never a shared one —
the script migrates it and EMPTIES its run tables):

    .venv/bin/python bench/scale.py [--parked 2000] [--batch 10000] [--workers 2] \\
        [--database-url postgres://postgres@127.0.0.1:5432/stevora_bench] [--broker-url redis://127.0.0.1:6379/7]

Prints one table per phase:

1. parking N runs on an approval (``start_runs`` in batches of 1,000; 99 % for the group
   ``reviewers``, 1 % for the group ``legal``): starts/s, and the database size per parked run;
2. list pages with N pending (and with ``--pending-rows`` more, copied as rows, e.g.
   100,000): ``GET /api/v1/approvals/`` (first page, the 20th page, as a
   reviewer, as a member of ``legal`` who may decide only 1 % — the sparse case, where
   the query reads past many rows it may not show — as a superuser),
   ``manage.py pending_approvals`` (the default 200 rows, ``--as``), the admin inbox;
3. batch starts of a one-step no-op workflow with no worker running: ``start_runs``
   (service, batches of 1,000), ``POST /api/v1/runs/batch/``, against ``start_run`` one
   at a time; the messages are purged and the runs deleted afterwards;
4. a: with no worker running, 100 approvals decided one at a time (``decide``), then half
   of the rest in bulk (``decide_many`` as the reviewer, a call per chunk; the ``legal``
   ones are refused): decisions/s of the deciding process alone; b: with the workers up
   (after they finished the runs of a), the other half in bulk: decisions/s, and each
   run's time from its chunk's commit to its completion (p50/p95); then decisions in small
   chunks (``--resume-chunk``), each once the last one's runs finished: commit -> next step
   started and -> run completed (p50/p95); the workers' memory before and after.

Times are printed, never asserted. The workers are two Celery prefork workers (``-c 1``)
and one beat, started and stopped by this script (only the process groups it started).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine_overhead import Cluster, _procs, configure_environment, ensure_database, purge  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/stevora_bench"
DEFAULT_BROKER = "redis://127.0.0.1:6379/7"
TABLES = ("runs_run", "steps_stepexecution", "runs_runevent", "approvals_approval")


def table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}\n" + "-" * len(title))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    sys.stdout.flush()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def reset() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE runs_runevent, steps_stepexecution, runs_run CASCADE")


def relation_bytes() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT sum(pg_total_relation_size(c)) FROM unnest(%s::regclass[]) AS c", [list(TABLES)])
        return int(cursor.fetchone()[0])


def vacuum() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for name in TABLES:
            cursor.execute(f"VACUUM ANALYZE {name}")


def timed(fn: Any, rounds: int = 5) -> float:
    fn()  # warm
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def users() -> dict[str, Any]:
    from django.contrib.auth.models import Group, Permission, User

    perms = Permission.objects.filter(codename__in=["decide_approval", "view_approval", "view_run", "add_run"])
    made = {}
    for name, group in (("reviewer", "reviewers"), ("lena", "legal")):
        user, _ = User.objects.get_or_create(username=f"bench-{name}", defaults={"is_staff": True})
        user.user_permissions.add(*perms)
        user.groups.add(Group.objects.get_or_create(name=group)[0])
        made[name] = user
    made["root"] = User.objects.get_or_create(username="bench-root",
                                              defaults={"is_staff": True, "is_superuser": True})[0]
    return made


def api_client(user: Any) -> Any:
    from rest_framework.test import APIClient

    from api.services import create_key
    from runs.models import Workspace

    key = create_key(name=f"bench {user.username}", user=user, workspace=Workspace.default(), rate="1000000/min")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.plaintext}")
    return client


def park(n: int) -> list[tuple[str, str]]:
    from runs.services import BatchItem, load_workflow, start_run, start_runs

    for name, approvers in (("scale-parked", {"approvers": {"groups": ["reviewers"]}}),
                            ("scale-legal", {"approvers": {"groups": ["legal"]}})):
        load_workflow({"name": name, "steps": [
            {"name": "ok", "type": "approval", "content": {"n": "{{ input.n }}"}, **approvers},
            {"name": "after", "type": "task", "handler": "bench.noop"},
        ]})
    vacuum()
    before = relation_bytes()
    legal = max(1, n // 100)
    t0 = time.perf_counter()
    for start in range(0, n - legal, 1000):
        stop = min(start + 1000, n - legal)
        start_runs("scale-parked", [BatchItem({"n": i}) for i in range(start, stop)], actor="bench")
    start_runs("scale-legal", [BatchItem({"n": i}) for i in range(legal)], actor="bench")
    batch_s = time.perf_counter() - t0
    sample = min(200, n)
    t0 = time.perf_counter()
    for i in range(sample):
        start_run("scale-parked", {"n": -i}, actor="bench")
    single_s = time.perf_counter() - t0
    vacuum()
    size = relation_bytes() - before
    return [
        ("parked runs", f"{n + sample:,} ({legal:,} for group legal, the rest for group reviewers)"),
        ("start_runs, batches of 1,000", f"{batch_s:.2f} s, {n / batch_s:,.0f} runs/s"),
        (f"start_run one at a time ({sample})",
         f"{single_s / sample * 1000:.2f} ms each, {sample / single_s:,.0f} runs/s"),
        ("database size per parked run", f"{size / (n + sample):,.0f} bytes (runs, steps, history, approvals; "
                                         f"tables and indexes)"),
    ]


def fill(n: int) -> None:
    """N more pending approvals, as rows: copies of a parked run's run, waiting step and
    approval (1 % of the ``legal`` one), inserted 5,000 at a time. Only the list pages
    are measured on them; ``unfill`` deletes them before anything decides."""
    import uuid

    from approvals.models import Approval
    from runs.models import Run
    from steps.models import StepExecution

    templates = {}
    for name in ("scale-parked", "scale-legal"):
        approval = Approval.objects.filter(workflow_name=name, status="pending").select_related("run", "step").first()
        assert approval is not None
        templates[name] = approval
    for start in range(0, n, 5000):
        runs, steps, approvals = [], [], []
        for i in range(start, min(start + 5000, n)):
            t = templates["scale-legal" if i % 100 == 0 else "scale-parked"]
            run = Run(**{f.attname: getattr(t.run, f.attname) for f in Run._meta.concrete_fields})
            run.id, run.created_by = uuid.uuid4(), "bench-fill"
            step = StepExecution(**{f.attname: getattr(t.step, f.attname) for f in StepExecution._meta.concrete_fields})
            step.id, step.run_id = None, run.id
            approval = Approval(**{f.attname: getattr(t, f.attname) for f in Approval._meta.concrete_fields})
            approval.id, approval.run_id = None, run.id
            runs.append(run)
            steps.append(step)
            approvals.append(approval)
        Run.objects.bulk_create(runs)
        StepExecution.objects.bulk_create(steps)
        for approval, step in zip(approvals, steps, strict=True):
            approval.step_id = step.id
        Approval.objects.bulk_create(approvals)


def unfill() -> None:
    """Delete the copies in SQL (the ORM's cascade would load 300,000 rows first)."""
    from django.db import connection, transaction

    copies = "SELECT id FROM runs_run WHERE created_by = 'bench-fill'"
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM approvals_approval WHERE run_id IN ({copies})")
        cursor.execute(f"DELETE FROM steps_stepexecution WHERE run_id IN ({copies})")
        cursor.execute("DELETE FROM runs_run WHERE created_by = 'bench-fill'")


def lists(people: dict[str, Any]) -> list[tuple[str, str]]:
    from django.core.management import call_command
    from django.test import Client

    from approvals.models import Approval

    rows: list[tuple[str, str]] = [("pending approvals", f"{Approval.objects.filter(status='pending').count():,}")]
    for who in ("reviewer", "lena", "root"):
        client = api_client(people[who])

        def first(client: Any = client) -> None:
            assert client.get("/api/v1/approvals/").status_code == 200

        rows.append((f"GET /api/v1/approvals/ first page, as {who}", ms(timed(first))))
    from approvals.services import decidable_by
    from runs.models import Workspace

    for who in ("reviewer", "lena"):
        query = decidable_by(people[who]).filter(workspace=Workspace.default())[:51]
        plan = query.explain(analyze=True)
        executed = next((line.split(":")[1].strip() for line in plan.splitlines() if "Execution Time" in line), "?")

        def fetch(query: Any = query) -> None:
            list(query.all())

        rows.append((f"  its query alone (51 rows), as {who}", f"{ms(timed(fetch))} (EXPLAIN ANALYZE: {executed})"))
    client = api_client(people["reviewer"])
    url = "/api/v1/approvals/"
    for _ in range(19):
        url = client.get(url).json()["next"] or url
    deep = url

    def twentieth() -> None:
        assert client.get(deep).status_code == 200

    rows.append(("GET /api/v1/approvals/ 20th page, as reviewer", ms(timed(twentieth))))
    commands: list[tuple[str, list[str]]] = [
        ("pending_approvals (200 rows)", []), ("pending_approvals --as bench-lena", ["--as", "bench-lena"]),
        ("pending_approvals --json (200 rows)", ["--json"])]
    for label, extra in commands:
        def command(extra: list[str] = extra) -> None:
            call_command("pending_approvals", *extra, stdout=io.StringIO())

        rows.append((label, ms(timed(command))))
    web = Client()
    web.force_login(people["reviewer"])

    def inbox() -> None:
        assert web.get("/admin/approvals/approval/").status_code == 200

    rows.append(("admin inbox /admin/approvals/approval/, as reviewer", ms(timed(inbox))))
    return rows


def batch_starts(m: int, people: dict[str, Any], queue: str) -> list[tuple[str, str]]:
    from runs.models import Run
    from runs.services import BatchItem, load_workflow, start_run, start_runs

    load_workflow({"name": "scale-noop", "input_schema": {"type": "object", "properties": {"n": {"type": "integer"}},
                                                          "required": ["n"]},
                   "steps": [{"name": "only", "type": "task", "handler": "bench.noop"}]})
    start_runs("scale-noop", [BatchItem({"n": 0})])  # warm
    t0 = time.perf_counter()
    for start in range(0, m, 1000):
        start_runs("scale-noop", [BatchItem({"n": i}) for i in range(start, min(start + 1000, m))], actor="bench")
    service_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, m, 1000):
        start_runs("scale-noop", [BatchItem({"n": i}, f"k{i}") for i in range(start, min(start + 1000, m))],
                   actor="bench")
    keyed_s = time.perf_counter() - t0
    client = api_client(people["root"])
    body = {"workflow": "scale-noop", "items": [{"input": {"n": i}} for i in range(1000)]}
    api_s = timed(lambda: client.post("/api/v1/runs/batch/", body, format="json"), rounds=3)
    sample = 500
    t0 = time.perf_counter()
    for i in range(sample):
        start_run("scale-noop", {"n": i}, actor="bench")
    single_s = time.perf_counter() - t0
    purge(queue)
    Run.objects.filter(workflow_name="scale-noop").delete()
    return [
        (f"start_runs {m:,} runs, batches of 1,000", f"{service_s:.2f} s, {m / service_s:,.0f} runs/s"),
        (f"start_runs {m:,} runs with idempotency keys", f"{keyed_s:.2f} s, {m / keyed_s:,.0f} runs/s"),
        ("POST /api/v1/runs/batch/ with 1,000 items", f"{ms(api_s)}, {1000 / api_s:,.0f} runs/s"),
        (f"start_run one at a time ({sample})",
         f"{single_s / sample * 1000:.2f} ms each, {sample / single_s:,.0f} runs/s"),
    ]


def _bulk(ids: list[int], user: Any, chunk: int) -> tuple[int, int, float, dict[int, float]]:
    """decide_many over ``ids``, a call per chunk: (decided, refused, seconds, commit time per decided id)."""
    from approvals.services import decide_many

    commits: dict[int, float] = {}
    decided = refused = 0
    t0 = time.perf_counter()
    for start in range(0, len(ids), chunk):
        results = decide_many(ids[start:start + chunk], user=user, approve=True, comment="bulk", chunk=chunk)
        now = time.time()
        for r in results:
            if r.outcome == "decided":
                decided += 1
                commits[r.id] = now
            else:
                refused += 1
    return decided, refused, time.perf_counter() - t0, commits


def _wait_completed(approval_ids: list[int]) -> dict[Any, Any]:
    from approvals.models import Approval
    from runs.models import Run

    runs = set(Approval.objects.filter(pk__in=approval_ids).values_list("run_id", flat=True))
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and Run.objects.filter(pk__in=runs).exclude(status="completed").exists():
        time.sleep(0.5)
    return dict(Run.objects.filter(pk__in=runs).values_list("pk", "finished_at"))


def decisions_alone(people: dict[str, Any], chunk: int, bulk: int = 0) -> tuple[list[tuple[str, str]], list[int]]:
    """No worker running: what one process decides per second (the resumed steps just queue)."""
    from approvals.models import Approval
    from approvals.services import decide

    reviewer = people["reviewer"]
    ids = list(Approval.objects.filter(status="pending").order_by("requested_at", "id").values_list("pk", flat=True))
    sample, half = ids[:100], ids[100:100 + bulk] if bulk else ids[100:len(ids) // 2]
    t0 = time.perf_counter()
    for approval_id in sample:
        decide(approval_id, user=reviewer, approve=True)
    single_s = time.perf_counter() - t0
    decided, refused, bulk_s, _ = _bulk(half, reviewer, chunk)
    return [
        (f"decide one at a time ({len(sample)})", f"{single_s / len(sample) * 1000:.2f} ms each, "
                                                  f"{len(sample) / single_s:,.0f} decisions/s"),
        (f"decide_many {len(half):,} ids, chunks of {chunk}",
         f"{bulk_s:.2f} s: {decided:,} decided, {refused:,} refused (not an approver); "
         f"{decided / bulk_s:,.0f} decisions/s"),
    ], sample + half


def group_rss(pgids: set[int]) -> int:
    """Resident memory (bytes) of every process in these process groups (a worker and its pool)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                raw = f.read()
            if int(raw[raw.rindex(")") + 2:].split()[2]) not in pgids:
                continue
            with open(f"/proc/{entry.name}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


def resume_latency(people: dict[str, Any], chunk: int, sample: int) -> list[tuple[str, str]]:
    """Decisions arriving in small chunks while the rest stays parked: each chunk's commit to
    its runs' next step starting and to their completion, the queue empty before each chunk."""
    from approvals.models import Approval
    from steps.models import StepExecution

    reviewer = people["reviewer"]
    pending = Approval.objects.filter(status="pending", workflow_name="scale-parked")
    parked = pending.count()
    ids = list(pending.order_by("requested_at", "id").values_list("pk", flat=True)[:sample])
    to_start: list[float] = []
    to_done: list[float] = []
    t0 = time.perf_counter()
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        _, _, _, commits = _bulk(part, reviewer, chunk)
        finished = _wait_completed(list(commits))
        run_of = dict(Approval.objects.filter(pk__in=list(commits)).values_list("pk", "run_id"))
        started = dict(StepExecution.objects.filter(run_id__in=list(run_of.values()), key="after")
                       .values_list("run_id", "started_at"))
        for approval_id, committed in commits.items():
            run_id = run_of[approval_id]
            if (began := started.get(run_id)) is not None:
                to_start.append(began.timestamp() - committed)
            if finished.get(run_id) is not None:
                to_done.append(finished[run_id].timestamp() - committed)
    elapsed = time.perf_counter() - t0

    def pct(values: list[float], p: float) -> str:
        values = sorted(values)
        return ms(values[min(len(values) - 1, int(p * len(values)))]) if values else "n/a"

    return [
        ("parked while measuring", f"{parked:,} pending approvals"),
        (f"decisions in chunks of {chunk}", f"{len(ids):,} in {elapsed:.1f} s (each chunk waits for the last)"),
        ("chunk commit -> next step started, p50 / p95", f"{pct(to_start, 0.5)} / {pct(to_start, 0.95)}"),
        ("chunk commit -> run completed, p50 / p95", f"{pct(to_done, 0.5)} / {pct(to_done, 0.95)}"),
    ]


def decisions(people: dict[str, Any], chunk: int, earlier: list[int],
              limit: int | None = None) -> list[tuple[str, str]]:
    from approvals.models import Approval

    t0 = time.perf_counter()
    _wait_completed(earlier)
    drain_s = time.perf_counter() - t0
    reviewer = people["reviewer"]
    rest = list(Approval.objects.filter(status="pending").order_by("requested_at", "id").values_list("pk", flat=True))
    if limit is not None:
        rest = rest[:limit]
    decided, refused, bulk_s, commits = _bulk(rest, reviewer, chunk)
    finished = _wait_completed(list(commits))
    run_of = dict(Approval.objects.filter(pk__in=list(commits)).values_list("pk", "run_id"))
    lags = sorted(done.timestamp() - t for a, t in commits.items() if (done := finished.get(run_of[a])) is not None)
    drained = (max(f.timestamp() for f in finished.values() if f) - max(commits.values())) if commits else 0.0

    def pct(p: float) -> float:
        return lags[min(len(lags) - 1, int(p * len(lags)))] if lags else float("nan")

    return [
        ("the runs decided in 4a, all completed", f"{drain_s:.1f} s after the workers started"),
        (f"decide_many {len(rest):,} ids, chunks of {chunk}",
         f"{bulk_s:.2f} s: {decided:,} decided, {refused:,} refused (not an approver); "
         f"{decided / bulk_s:,.0f} decisions/s"),
        ("decision commit -> run completed, p50", ms(pct(0.50))),
        ("decision commit -> run completed, p95", ms(pct(0.95))),
        ("runs completed", f"{len(lags):,} of {len(commits):,}; the last {drained:.1f} s after the last decision"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parked", type=int, default=2000, help="runs parked on an approval [2000]")
    parser.add_argument("--batch", type=int, default=10000, help="runs started by the batch-start phase [10000]")
    parser.add_argument("--chunk", type=int, default=500, help="decide_many chunk (one transaction each) [500]")
    parser.add_argument("--workers", type=int, default=2, help="Celery prefork workers (-c 1) for phase 4 [2]")
    parser.add_argument("--pending-rows", type=int, default=0,
                        help="then measure the list pages again with this many more pending approvals, inserted "
                             "as copies of parked rows (fast; deleted before phase 3) [0]")
    parser.add_argument("--bulk", type=int, default=0,
                        help="ids decided in bulk in 4a and again in 4b (0: half of the pending each) [0]")
    parser.add_argument("--resume-chunk", type=int, default=20,
                        help="4b: then decisions in chunks of this many, each once the last one's runs finished [20]")
    parser.add_argument("--resume-sample", type=int, default=400,
                        help="4b: how many decisions the resume-latency measure takes (0: skip it) [400]")
    parser.add_argument("--skip-batch", action="store_true", help="skip phase 3 (batch starts)")
    parser.add_argument("--skip-decisions", action="store_true", help="phases 1-3 only (no workers)")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--broker-url", default=os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER))
    args = parser.parse_args(argv)
    if args.parked < 300 or args.batch < 1000:
        parser.error("--parked must be at least 300 and --batch at least 1000")

    configure_environment(args.database_url, args.broker_url)
    os.environ.setdefault("SECRET_KEY", "bench-scale-only-not-a-secret")  # production settings want one
    ensure_database(args.database_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    reset()
    queue = os.environ["STEVORA_QUEUE"]
    purge(queue)
    people = users()
    print(f"scale: {args.parked:,} parked runs, {args.batch:,} batch starts; PostgreSQL "
          f"{args.database_url.rsplit('/', 1)[1]}, Redis {args.broker_url}", flush=True)
    try:
        table(f"1. parking {args.parked:,} runs on an approval", park(args.parked))
        vacuum()
        table("2. list pages (median of 5)", lists(people))
        if args.pending_rows:
            fill(args.pending_rows)
            vacuum()
            table(f"2b. list pages with {args.pending_rows:,} more pending approvals (rows copied in SQL)",
                  lists(people))
            unfill()
            vacuum()
        if not args.skip_batch:
            table("3. batch starts (no worker running; first step a no-op task)",
                  batch_starts(args.batch, people, queue))
        if not args.skip_decisions:
            rows, earlier = decisions_alone(people, args.chunk, args.bulk)
            table("4a. decisions, no worker running (one process alone)", rows)
            cluster = Cluster("stevora", dict(os.environ), workers=args.workers).start()
            try:
                groups = {p.pid for p in cluster.workers}
                time.sleep(5)
                rss_before = group_rss(groups)
                rows = decisions(people, args.chunk, earlier, args.bulk or None)
                if args.resume_sample:
                    rows += resume_latency(people, args.resume_chunk, args.resume_sample)
                rows.append((f"worker memory ({args.workers} workers with their pools), before / after",
                             f"{rss_before / 2**20:,.0f} MB / {group_rss(groups) / 2**20:,.0f} MB"))
                table(f"4b. decisions with {args.workers} workers running", rows)
            finally:
                cluster.stop()
    finally:
        for proc in _procs:
            proc.kill()
        purge(queue)
    return 0


if __name__ == "__main__":
    sys.exit(main())
