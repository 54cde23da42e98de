"""LLM fallback speed: a provider whose circuit is open costs (almost) nothing.

Issue 3, "Speed". Against the local scripted server (tests/support/llm_server.py, a real
HTTP server on 127.0.0.1), this script measures in one process:

(a) breaker open: a primary answering 503 has had its circuit opened by the breaker; an
    llm step naming it with a fallback. Time from the step's start (its claim) to the
    fallback's answer, next to the same step naming the fallback directly. Ratio.
(b) overhead per LLM call: our time around one call minus the server's time handling it,
    for the chain alone (records, roll-ups to a step and its run, breaker, httpx) and for the
    whole step (claim, render, call, fenced commit, run completion). For the chain alone it
    also prints the statements of one call (django's CaptureQueriesContext), the calling
    thread's CPU time, and — on PostgreSQL — the same calls with the session's
    ``synchronous_commit`` off, i.e. the overhead *excluding* the durable commit's wait for
    the disk (the difference is that wait: one fsync per call).
(c) for context: the same step while the primary is still closed (503, retried, then
    fallback) — what the breaker saves.

Steps are executed by ``runs.engine.executor.process_step`` in this process (no broker), so
the numbers are the engine's and the chain's, not Celery's. Prints medians and ratios;
never a test: the numbers depend on the machine and its load.

    .venv/bin/python bench/llm_fallback.py                      # embedded SQLite
    .venv/bin/python bench/llm_fallback.py --database-url postgres://postgres@127.0.0.1:5432/stevora_llm_bench
    .venv/bin/python bench/llm_fallback.py --chain-only ...     # (b)'s chain numbers only (quicker)
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def configure(database_url: str | None) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "stevora_project.settings"
    os.environ.pop("CELERY_BROKER_URL", None)  # embedded broker: nothing is published, we run steps here
    os.environ["STEVORA_LOG_LEVEL"] = "ERROR"
    if database_url:
        os.environ["DATABASE_URL"] = database_url
        ensure_database(database_url)
    else:
        os.environ.pop("DATABASE_URL", None)
        var = tempfile.mkdtemp(prefix="stevora-llm-bench-")
        os.environ["STEVORA_VAR_DIR"] = var
        os.environ["STEVORA_SQLITE_PATH"] = str(Path(var) / "bench.sqlite3")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def ensure_database(url: str) -> None:
    import psycopg
    from psycopg import sql

    name = url.rsplit("/", 1)[1].split("?")[0]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default: embedded SQLite)")
    parser.add_argument("-n", type=int, default=200, help="steps per measurement")
    parser.add_argument("--chain-only", action="store_true", help="measure the chain alone, (b), and stop")
    args = parser.parse_args()
    configure(args.database_url)

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from providers.chain import Scope, complete, http_client
    from providers.models import BreakerState, LLMCall, Provider, ProviderHealth
    from providers.registry import api_key, resolve
    from providers.wire import ChatRequest, client_for
    from runs.engine.executor import process_step
    from runs.services import load_workflow, start_run
    from tests.support.llm_server import LLMServer

    server = LLMServer().start()
    common: dict[str, Any] = dict(kind="openai_compatible", timeout_seconds=5, max_retries=2, backoff_seconds=0.05,
                                  max_backoff_seconds=0.2, connect_timeout_seconds=1)
    Provider.objects.all().delete()
    primary = Provider.objects.create(name="primary", model="p", base_url=server.url("primary"),
                                      breaker_threshold=6, breaker_cooldown_seconds=3600, **common)
    Provider.objects.create(name="fallback", model="f", base_url=server.url("fallback"), **common)
    server.script("primary", default={"status": 503, "message": "unavailable"})
    server.script("fallback", default={"text": "ok", "usage": (20, 5)})
    message = [{"role": "user", "content": "ping"}]
    load_workflow({"name": "bench-direct", "steps": [
        {"name": "ask", "type": "llm", "provider": "fallback", "messages": message}]})
    load_workflow({"name": "bench-noop", "steps": [{"name": "ask", "type": "task", "handler": "echo"}]})
    load_workflow({"name": "bench-fallback", "steps": [
        {"name": "ask", "type": "llm", "provider": "primary", "fallback": ["fallback"], "messages": message}]})

    def run_step(workflow: str) -> tuple[float, float, float]:
        """(wall time of the whole step, step start -> fallback answer, server seconds) for one run."""
        run = start_run(workflow, {}).run
        step_id = run.steps.values_list("id", flat=True).get()
        served = server.server_seconds
        t0 = time.perf_counter()
        process_step(step_id)
        wall = time.perf_counter() - t0
        step = run.steps.get()
        if workflow == "bench-noop":
            return wall, 0.0, 0.0
        answer = LLMCall.objects.filter(step_id=step_id, status="succeeded").get()
        assert step.status == "completed", step.error
        assert answer.finished_at is not None and step.started_at is not None
        return wall, (answer.finished_at - step.started_at).total_seconds(), server.server_seconds - served

    load_workflow({"name": "bench-parked", "steps": [{"name": "nap", "type": "wait", "seconds": 3600}]})
    parked = start_run("bench-parked", {}).run
    parked_step = parked.steps.get()
    req = ChatRequest(messages=message)
    durable = connection.vendor == "postgresql"
    rounds = itertools.count(1)  # one answer per (step, round): each call is the parked step's next round

    direct_route = {"provider": "fallback"}
    open_route = {"provider": "primary", "fallback": ["fallback"]}

    def chain_call(config: dict[str, Any], scoped: bool = True) -> tuple[float, float, float]:
        """(wall, server seconds, this thread's CPU seconds) of one call, charged to a parked step:
        what an llm step of one round does around the HTTP request (resolve its providers, call)."""
        scope = (Scope(step_id=parked_step.pk, run_id=parked.pk, first_attempt=True, budgeted=False)
                 if scoped else Scope())
        served = server.server_seconds
        c0 = time.thread_time()
        t0 = time.perf_counter()
        complete(resolve(config), req, scope, next(rounds) if scoped else 1)
        wall = time.perf_counter() - t0
        return wall, server.server_seconds - served, time.thread_time() - c0

    def synchronous_commit(on: bool) -> None:
        if durable:
            with connection.cursor() as cursor:
                cursor.execute(f"SET synchronous_commit TO {'on' if on else 'off'}")

    def measure_chain() -> None:
        for _ in range(20):
            chain_call(direct_route)
        with CaptureQueriesContext(connection) as queries:
            chain_call(direct_route)
        statements = [q["sql"].split(" ", 1)[0] for q in queries.captured_queries]
        timed, no_wait = [], []
        for _ in range(args.n):  # interleaved: durable commit / no wait for the disk
            timed.append(chain_call(direct_route))
            if durable:
                synchronous_commit(False)
                no_wait.append(chain_call(direct_route))
                synchronous_commit(True)
        overhead = median_ms([w - s for w, s, _ in timed])
        cpu = median_ms([c for _, _, c in timed])
        print(f"(b) the chain alone (providers.chain.complete), one answered call charged to a step and its run; "
              f"n={args.n}, medians")
        print(f"    statements per call            {len(statements):8d}   ({', '.join(statements)})")
        print(f"    server time per call           {median_ms([s for _, s, _ in timed]):8.2f} ms")
        print(f"    chain overhead (wall - server) {overhead:8.2f} ms")
        print(f"    this thread's CPU per call     {cpu:8.2f} ms   (includes httpx and the HTTP client side)")
        if durable:
            quick = median_ms([w - s for w, s, _ in no_wait])
            print(f"    overhead without the commit's wait for the disk (synchronous_commit off)  {quick:8.2f} ms")
            print(f"    => the durable commit's wait   {overhead - quick:8.2f} ms")
        bare = [bare_request() for _ in range(args.n)]
        bare_overhead = median_ms([w - s for w, s, _ in bare])
        bare_cpu = median_ms([c for _, _, c in bare])
        print(f"    baseline: the same request by the same pooled httpx client, JSON decoded, no records: "
              f"{bare_overhead:.2f} ms (wall - server), {bare_cpu:.2f} ms CPU")
        print(f"    => what the chain adds to the HTTP request: {overhead - bare_overhead:.2f} ms wall, "
              f"{cpu - bare_cpu:.2f} ms of this thread's CPU")
        print()

    def bare_request() -> tuple[float, float, float]:
        """The HTTP request any client makes (what ``providers.chain._send`` sends), alone."""
        fallback = Provider.objects.get(name="fallback")
        http = client_for(fallback.kind).build(fallback, fallback.model, req, api_key(fallback))
        served = server.server_seconds
        c0 = time.thread_time()
        t0 = time.perf_counter()
        http_client().post(http.url, headers=http.headers, json=http.body).json()
        wall = time.perf_counter() - t0
        return wall, server.server_seconds - served, time.thread_time() - c0

    if args.chain_only:
        load = os.getloadavg()
        print(f"database: {connection.vendor}; load average {load[0]:.1f} on {os.cpu_count()} CPUs")
        measure_chain()
        server.stop()
        return

    # (c) the primary is still closed: 503, retried with backoff, then the fallback.
    closed = [run_step("bench-fallback") for _ in range(2)]
    assert ProviderHealth.objects.get(pk=primary.pk).state == BreakerState.OPEN, "the breaker should be open now"

    for _ in range(20):  # warm up both paths (connections, caches)
        run_step("bench-direct")
        run_step("bench-fallback")
    # Interleaved, so that the load of a shared machine weighs on both sides alike.
    direct, via_open, noop = [], [], []
    for _ in range(args.n):
        direct.append(run_step("bench-direct"))
        via_open.append(run_step("bench-fallback"))
        noop.append(run_step("bench-noop"))
    primary_requests = server.count("primary")

    # (a) continued: the chain alone, one call at a time, no step around it.
    for _ in range(20):
        chain_call(direct_route, scoped=False)
    chain_direct, chain_open = [], []
    for _ in range(args.n):
        chain_direct.append(chain_call(direct_route, scoped=False))
        chain_open.append(chain_call(open_route, scoped=False))
    assert server.count("primary") == primary_requests, "an open circuit must not send requests"

    def col(rows: Sequence[tuple[float, ...]], i: int) -> list[float]:
        return [r[i] for r in rows]

    d_start, o_start = median_ms(col(direct, 1)), median_ms(col(via_open, 1))
    d_wall, o_wall = median_ms(col(direct, 0)), median_ms(col(via_open, 0))
    c_direct, c_open = median_ms(col(chain_direct, 0)), median_ms(col(chain_open, 0))
    server_ms = median_ms(col(chain_direct, 1))
    step_overhead = median_ms([w - s for w, _, s in direct])
    load = os.getloadavg()
    print(f"database: {connection.vendor}; n={args.n} per measurement, interleaved; medians; "
          f"load average {load[0]:.1f} on {os.cpu_count()} CPUs")
    print()
    print("(a) breaker open: step start -> fallback answer")
    print(f"    fallback named directly        {d_start:8.2f} ms")
    print(f"    primary open, then fallback    {o_start:8.2f} ms   ratio {o_start / d_start:.3f}  "
          f"(+{o_start - d_start:.2f} ms)")
    print(f"    whole step, direct / via open  {d_wall:8.2f} / {o_wall:.2f} ms   ratio {o_wall / d_wall:.3f}")
    print(f"    chain only, direct / via open  {c_direct:8.2f} / {c_open:.2f} ms   ratio {c_open / c_direct:.3f}  "
          f"(+{c_open - c_direct:.2f} ms)")
    print(f"    requests sent to the open primary while measuring: {server.count('primary') - primary_requests}")
    print()
    measure_chain()
    print("(b) overhead per LLM step (our time minus the server's time)")
    print(f"    server time per call           {server_ms:8.2f} ms")
    noop_ms = median_ms(col(noop, 0))
    print(f"    whole step (claim, call, fenced commit, run completion)  {step_overhead:8.2f} ms")
    print(f"    a no-op task step, same path, for comparison   {noop_ms:8.2f} ms")
    print(f"    => the llm step's own share (step - server - no-op task)  {step_overhead - noop_ms:8.2f} ms")
    print()
    print("(c) before the breaker opened: 503 x3 with backoff, then fallback")
    print(f"    step start -> fallback answer  {median_ms(col(closed, 1)):8.2f} ms   "
          f"ratio to direct {median_ms(col(closed, 1)) / d_start:.1f}")
    server.stop()


if __name__ == "__main__":
    main()
