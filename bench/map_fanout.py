"""Map fan-out: what one map item costs, and whether that grows with the size of the map.

A workflow with one ``map`` step over n no-op items (``max_concurrency`` 20) is run to
completion in this process (``runs.engine.executor.process_step`` on each ready item; no broker,
no worker), for several n. Each item is claimed, executed and committed: on PostgreSQL an
item that is not the last completes, makes the next item and claims it in one statement
(``runs.engine.mapitems``), as a sequential step does (``runs.engine.hotpath``); only the
last item takes the general commit (it joins). The baseline,
measured in the same run, is a step of a sequential workflow of 10 no-op steps through
the same loop.

It prints the time per item for each n, the ratio to the sequential step measured just
before that map (the least of five 10-step runs), the ``start_run`` call's time, and the ratio of
the largest map's per-item time to the smallest's (1.0: an item costs the same whatever the
size of its map). Never a test; results go in docs/benchmarks.md.

    .venv/bin/python -m bench.map_fanout                         # n = 100, 1000, 3000 on PostgreSQL
    .venv/bin/python -m bench.map_fanout --sizes 100,10000,100000 --database-url postgres://…/db
    .venv/bin/python -m bench.map_fanout --sizes 100 --count-statements 1000   # load-independent counts
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/stevora_bench"
QUEUE = "bench-map-unconsumed"  # promotions publish doorbells; nobody listens, the queue is dropped


def run_to_end(run_id: Any) -> None:
    """Process every ready step of the run here until none is left."""
    from runs.engine.executor import process_step
    from steps.models import StepExecution

    while True:
        ready = list(StepExecution.objects.filter(run_id=run_id, status="ready").order_by("id")
                     .values_list("pk", flat=True)[:200])
        if not ready:
            return
        for step_id in ready:
            process_step(step_id)


def timed_run(name: str, run_input: dict[str, Any]) -> float:
    return timed_run_and_start(name, run_input)[0]


def timed_run_and_start(name: str, run_input: dict[str, Any]) -> tuple[float, float]:
    """(start to completion, the start_run call alone) in seconds."""
    from runs.models import Run
    from runs.services import start_run

    t0 = time.perf_counter()
    run = start_run(name, run_input).run
    started = time.perf_counter() - t0
    run_to_end(run.pk)
    elapsed = time.perf_counter() - t0
    status = Run.objects.values_list("status", flat=True).get(pk=run.pk)
    if status != "completed":
        raise RuntimeError(f"run {run.pk} ended {status}")
    return elapsed, started


def count_statements(n: int) -> tuple[float, float]:
    """(statements per sequential step, per map item of an n-item map): what each sends to
    the database, through Django's cursors and the engine's prepared statements (BEGIN and
    COMMIT not counted). Unlike the times, the counts do not depend on the machine's load."""
    from django.db import connection

    from runs.engine import hotpath

    count = [0]

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        count[0] += 1
        return execute(sql, params, many, context)

    prepared = hotpath._execute

    def counted(db: Any, statement: str, params: list[Any]) -> Any:
        count[0] += 1
        return prepared(db, statement, params)

    hotpath._execute = counted
    try:
        with connection.execute_wrapper(wrapper):
            timed_run("bench-noop10", {})
            sequential, count[0] = count[0], 0
            timed_run("bench-map", {"items": list(range(n))})
            return sequential / 10, count[0] / n
    finally:
        hotpath._execute = prepared


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,3000", help="map sizes, comma-separated [100,1000,3000]")
    parser.add_argument("--max-concurrency", type=int, default=20)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--broker-url", default=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/7"))
    parser.add_argument("--count-statements", type=int, metavar="N", default=0,
                        help="also count the statements per sequential step and per item of an N-item map")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]

    os.environ.update(DATABASE_URL=args.database_url, CELERY_BROKER_URL=args.broker_url, STEVORA_QUEUE=QUEUE,
                      STEVORA_HANDLER_MODULES="bench.handlers", DJANGO_SETTINGS_MODULE="stevora_project.settings")
    from bench.engine_overhead import ensure_database

    ensure_database(args.database_url)
    import django

    django.setup()
    import redis
    from django.core.management import call_command

    from runs.services import load_workflow

    call_command("migrate", verbosity=0)
    load_workflow({"name": "bench-map", "steps": [
        {"name": "each", "type": "map", "over": "{{ input.items }}", "max_concurrency": args.max_concurrency,
         "step": {"type": "task", "handler": "bench.noop"}}]})
    load_workflow({"name": "bench-noop10", "steps": [
        {"name": f"s{i}", "type": "task", "handler": "bench.noop"} for i in range(10)]})
    try:
        for _ in range(5):  # warm up: connections, prepared statements, caches
            timed_run("bench-noop10", {})
        timed_run("bench-map", {"items": list(range(20))})
        sequential = min(timed_run("bench-noop10", {}) for _ in range(20)) / 10
        before_maps = sequential
        print(f"map fan-out: max_concurrency {args.max_concurrency}; PostgreSQL "
              f"{args.database_url.rsplit('/', 1)[1]}; items processed in this process")
        print(f"{'':28s} {'ms / item':>10s} {'/ sequential step':>18s} {'start_run (ms)':>15s}")
        print(f"{'sequential step (baseline)':28s} {sequential * 1000:>10.2f} {1.0:>18.2f}")
        per_item = {}
        for n in sizes:
            # The sequential step again just before each map (the least of five runs): on a
            # shared machine the ratio to the nearest baseline is what can be compared.
            local = min(timed_run("bench-noop10", {}) for _ in range(5)) / 10
            total, start = timed_run_and_start("bench-map", {"items": list(range(n))})
            per_item[n] = total / n
            print(f"{f'map of {n} items':28s} {per_item[n] * 1000:>10.2f} {per_item[n] / local:>18.2f} "
                  f"{start * 1000:>15.1f}   (sequential step just before: {local * 1000:.2f} ms)", flush=True)
        if args.count_statements:
            per_step, per_item_count = count_statements(args.count_statements)
            print(f"statements: {per_step:.2f} per sequential step, {per_item_count:.2f} per item of a "
                  f"{args.count_statements}-item map", flush=True)
        # The baseline again after the maps: the machine is shared, so a drift shows here.
        sequential_after = min(timed_run("bench-noop10", {}) for _ in range(20)) / 10
        print(f"{'sequential step (again)':28s} {sequential_after * 1000:>10.2f} "
              f"{sequential_after / before_maps:>18.2f}")
        if len(sizes) > 1:
            print(f"growth: an item of a {sizes[-1]}-item map costs {per_item[sizes[-1]] / per_item[sizes[0]]:.2f}x "
                  f"an item of a {sizes[0]}-item map")
    finally:
        redis.Redis.from_url(args.broker_url).delete(QUEUE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
