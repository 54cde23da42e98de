"""Engine overhead: Stevora's per-step cost and throughput next to a raw Celery chain.

Issue 2, "Speed". In one run on this machine, against PostgreSQL and Redis, with two
Celery prefork workers (each its own subprocess and process group, ``-c 1``) per
system, this script measures:

(a) a workflow of 10 no-op task steps: median per-step overhead over N sequential
    runs ((run start -> run completion) / 10); the raw chain: 10 no-op tasks;
(b) steps/second for M runs (chains) started at once;
(c) recovery: SIGKILL of the worker process group that holds a long step, to that
    step running again on the other worker, with the default settings (lease 30 s,
    reconcile 2 s) and with shorter leases.

It prints a table with the ratios ours / raw. See bench/README.md. Never a test:
the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.procs import Proc

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/stevora_bench"
DEFAULT_BROKER = "redis://127.0.0.1:6379/7"
STEPS = 10

# Everything this script starts: SIGKILLed (by process group) on exit.
_procs: list[Proc] = []


def configure_environment(db_url: str, broker_url: str) -> None:
    os.environ["DATABASE_URL"] = db_url
    os.environ["CELERY_BROKER_URL"] = broker_url
    os.environ["BENCH_BROKER_URL"] = broker_url
    os.environ.setdefault("STEVORA_QUEUE", "stevora-bench")
    os.environ.setdefault("BENCH_RAW_QUEUE", "bench-raw")
    os.environ["STEVORA_HANDLER_MODULES"] = "bench.handlers"
    os.environ.setdefault("STEVORA_VAR_DIR", "/tmp/stevora-bench")
    os.environ["DJANGO_SETTINGS_MODULE"] = "stevora_project.settings"
    # Default engine settings unless the recovery phase says otherwise.
    for name in ("STEVORA_LEASE_SECONDS", "STEVORA_RECONCILE_SECONDS", "STEVORA_REDISPATCH_SECONDS",
                 "STEVORA_FAULT_POINT"):
        os.environ.pop(name, None)
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")


def ensure_database(db_url: str) -> None:
    import psycopg
    from psycopg import sql

    name = db_url.rsplit("/", 1)[1].split("?")[0]
    admin = db_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _proc(name: str, argv: list[str], env: dict[str, str]) -> Proc:
    proc = Proc(argv, env, f"bench-{name}")
    _procs.append(proc)
    return proc


# Pool processes per worker (--concurrency), the same for both systems.
CONCURRENCY = 1


def _worker_argv(app: str, queue: str, node: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", app, "worker", "-P", "prefork", "-c", str(CONCURRENCY), "-Q", queue,
            "-n", f"{node}@%h", "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "WARNING"]


class Cluster:
    """Two prefork workers (and, for Stevora, one beat running the reconciler)."""

    def __init__(self, kind: str, env: dict[str, str], workers: int = 2) -> None:
        self.kind = kind
        if kind == "stevora":
            queue = env["STEVORA_QUEUE"]
            self.workers = [_proc(f"stevora-w{i}", _worker_argv("stevora_project", queue, f"bench-stevora{i}"), env)
                            for i in range(workers)]
            schedule = tempfile.mkdtemp(prefix="bench-beat-") + "/schedule"
            self.beat: Proc | None = _proc("stevora-beat", [sys.executable, "-m", "celery", "-A", "stevora_project",
                                                           "beat", "-s", schedule, "-l", "WARNING"], env)
        else:
            queue = env["BENCH_RAW_QUEUE"]
            self.workers = [_proc(f"raw-w{i}", _worker_argv("bench.raw_chain", queue, f"bench-raw{i}"), env)
                            for i in range(workers)]
            self.beat = None

    def start(self) -> Cluster:
        for proc in self.workers:
            proc.start()
        if self.beat is not None:
            self.beat.start()
        return self

    def stop(self) -> None:
        for proc in [*self.workers, *([self.beat] if self.beat else [])]:
            proc.stop(timeout=10)


# --- CPU accounting ------------------------------------------------------------------


def _cpu_by_process() -> dict[int, tuple[str, int, float]]:
    """pid -> (command name, process group, CPU seconds so far), from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                raw = f.read()
        except OSError:
            continue  # gone meanwhile
        fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "; fields[0] is the state
        found[int(entry.name)] = (raw[raw.index("(") + 1:raw.rindex(")")], int(fields[2]),
                                  (int(fields[11]) + int(fields[12])) / tick)
    return found


class CpuMeter:
    """CPU time spent during a phase by each part: the system's workers (with their pool
    children), its beat, this driver, every PostgreSQL process and Redis."""

    PARTS = ("worker-main", "worker-pool", "beat", "driver", "postgres", "redis")

    def __init__(self, cluster: Cluster) -> None:
        self.workers = {p.pid for p in cluster.workers}
        self.beat = cluster.beat.pid if cluster.beat is not None else None

    def _part(self, pid: int, comm: str, pgid: int) -> str | None:
        if pid == os.getpid():
            return "driver"
        if pgid in self.workers:  # the worker's main process leads its group; the rest is its pool
            return "worker-main" if pid == pgid else "worker-pool"
        if pgid == self.beat:
            return "beat"
        if comm == "postgres":
            return "postgres"
        if comm.startswith("redis-server"):
            return "redis"
        return None

    def _totals(self) -> dict[str, float]:
        totals = dict.fromkeys(self.PARTS, 0.0)
        for pid, (comm, pgid, cpu) in _cpu_by_process().items():
            part = self._part(pid, comm, pgid)
            if part is not None:
                totals[part] += cpu
        return totals

    def __enter__(self) -> CpuMeter:
        self.before = self._totals()
        return self

    def __exit__(self, *exc: object) -> None:
        after = self._totals()
        self.spent = {part: after[part] - self.before[part] for part in self.PARTS}


# --- Stevora -------------------------------------------------------------------------


def load_bench_workflows() -> None:
    from runs.services import load_workflow

    load_workflow({"name": "bench-noop10", "steps": [
        {"name": f"s{i}", "type": "task", "handler": "bench.noop"} for i in range(STEPS)]})
    load_workflow({"name": "bench-recovery", "steps": [
        {"name": "before", "type": "task", "handler": "bench.noop"},
        {"name": "long", "type": "task", "handler": "bench.long",
         "config": {"marker": "{{ input.marker }}", "seconds": "{{ input.seconds }}"}},
        {"name": "after", "type": "task", "handler": "bench.noop"},
    ]})


def reset_database() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE runs_runevent, steps_stepexecution, runs_run CASCADE")


def purge(queue: str) -> None:
    from stevora_project.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)  # type: ignore[attr-defined]


def _wait_finished(run_ids: list[Any], timeout: float, interval: float) -> list[tuple[Any, str, Any]]:
    from runs.models import RUN_TERMINAL, Run

    deadline = time.monotonic() + timeout
    while True:
        rows = list(Run.objects.filter(pk__in=run_ids, status__in=RUN_TERMINAL)
                    .values_list("pk", "status", "finished_at"))
        if len(rows) == len(run_ids):
            return rows
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(rows)}/{len(run_ids)} runs finished after {timeout}s")
        time.sleep(interval)


def _check_completed(rows: list[tuple[Any, str, Any]]) -> None:
    bad = [(pk, status) for pk, status, _ in rows if status != "completed"]
    if bad:
        raise RuntimeError(f"{len(bad)} runs did not complete, e.g. {bad[:3]}")


def _stevora_done(r: Any, count: int, timeout: float) -> list[str]:
    """Block until ``count`` runs reported their end (bench.handlers pushes run ids to Redis)."""
    from bench.handlers import DONE_KEY

    ids: list[str] = []
    for _ in range(count):
        item = r.blpop([DONE_KEY], timeout=timeout)
        if item is None:
            raise RuntimeError(f"only {len(ids)}/{count} runs finished within {timeout}s")
        ids.append(item[1].decode().split()[0])
    return ids


def _finished(run_ids: list[Any]) -> list[tuple[Any, str, Any]]:
    from runs.models import Run

    rows = list(Run.objects.filter(pk__in=run_ids).values_list("pk", "status", "finished_at"))
    if len(rows) != len(run_ids):
        raise RuntimeError(f"only {len(rows)} of {len(run_ids)} runs exist")
    _check_completed(rows)
    return rows


def stevora_sequential(runs: int) -> list[float]:
    from bench.handlers import DONE_KEY
    from runs.services import start_run

    r = _raw_redis()
    r.delete(DONE_KEY)
    per_step = []
    for _ in range(runs):
        t0 = time.time()
        run = start_run("bench-noop10", {}).run
        done = _stevora_done(r, 1, timeout=60)
        assert done == [str(run.pk)], (done, run.pk)
        per_step.append((_finished([run.pk])[0][2].timestamp() - t0) / STEPS)
    return per_step


def stevora_burst(runs: int) -> float:
    from bench.handlers import DONE_KEY
    from runs.services import start_run

    r = _raw_redis()
    r.delete(DONE_KEY)
    t0 = time.time()
    ids = [start_run("bench-noop10", {}).run.pk for _ in range(runs)]
    _stevora_done(r, runs, timeout=600)
    end = max(finished.timestamp() for _, _, finished in _finished(ids))
    return runs * STEPS / (end - t0)


def fast_path_share(since: Any) -> tuple[int, int]:
    """Steps taken by the worker that committed their predecessor (no broker message):
    the fast path sets ``dispatched_at`` and ``started_at`` to the same instant."""
    from django.db.models import F

    from steps.models import StepExecution

    qs = StepExecution.objects.filter(created_at__gte=since, type="task")
    return qs.filter(started_at=F("dispatched_at")).count(), qs.count()


def worker_backends() -> set[int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> "
                       "pg_backend_pid()")
        return {row[0] for row in cursor.fetchall()}


# --- raw Celery chain ------------------------------------------------------------------


def raw_chain_signature(token: str) -> Any:
    from celery import chain

    from bench import raw_chain

    return chain(*[raw_chain.noop.si() for _ in range(STEPS - 1)], raw_chain.done.si(token))


def _raw_redis() -> Any:
    import redis

    return redis.Redis.from_url(os.environ["BENCH_BROKER_URL"])


def raw_sequential(runs: int) -> list[float]:
    from bench import raw_chain

    r = _raw_redis()
    r.delete(raw_chain.DONE_KEY)
    per_step = []
    for _ in range(runs):
        token = uuid.uuid4().hex
        t0 = time.time()
        raw_chain_signature(token).apply_async()
        item = r.blpop([raw_chain.DONE_KEY], timeout=60)
        if item is None:
            raise RuntimeError("raw chain did not finish within 60s")
        got, finished = item[1].decode().split()
        assert got == token, (got, token)
        per_step.append((float(finished) - t0) / STEPS)
    return per_step


def raw_burst(runs: int) -> float:
    from bench import raw_chain

    r = _raw_redis()
    r.delete(raw_chain.DONE_KEY)
    t0 = time.time()
    for _ in range(runs):
        raw_chain_signature(uuid.uuid4().hex).apply_async()
    ends: list[float] = []
    for _ in range(runs):
        item = r.blpop([raw_chain.DONE_KEY], timeout=600)
        if item is None:
            raise RuntimeError(f"only {len(ends)}/{runs} raw chains finished")
        ends.append(float(item[1].decode().split()[1]))
    return runs * STEPS / (max(ends) - t0)


# --- recovery --------------------------------------------------------------------------


def _marker_lines(path: Path) -> list[tuple[int, int, float]]:
    lines = []
    for line in path.read_text().splitlines():
        attempt, pid, at = line.split()
        lines.append((int(attempt), int(pid), float(at)))
    return lines


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def recovery(env: dict[str, str], lease: float | None, kill_after: float) -> dict[str, Any]:
    """SIGKILL the worker (process group) running a long step; time until the step runs again."""
    from runs.models import RunEvent
    from runs.services import start_run

    run_env = dict(env)
    if lease is not None:
        run_env["STEVORA_LEASE_SECONDS"] = str(lease)
    purge(env["STEVORA_QUEUE"])
    cluster = Cluster("stevora", run_env).start()
    try:
        marker = Path(tempfile.mkstemp(prefix="bench-recovery-", suffix=".txt")[1])
        run = start_run("bench-recovery", {"marker": str(marker), "seconds": 600}).run
        attempt1 = _wait(lambda: [x for x in _marker_lines(marker) if x[0] == 1], 60, "the long step to start")[0]
        time.sleep(kill_after)
        victim = next(w for w in cluster.workers if w.owns(attempt1[1]))
        killed_at = time.time()
        victim.kill()
        limit = (lease or 30.0) * 2 + 30
        attempt2 = _wait(lambda: [x for x in _marker_lines(marker) if x[0] >= 2], limit,
                         "the step to run again")[0]
        rows = _wait_finished([run.pk], timeout=60, interval=0.05)
        _check_completed(rows)
        recovered = RunEvent.objects.filter(run_id=run.pk, kind="step_recovered").values_list(
            "created_at", flat=True).first()
        survivor = next(w for w in cluster.workers if w is not victim)
        return {
            "lease": lease if lease is not None else 30.0,
            "default": lease is None,
            "kill_after": kill_after,
            "recovered_after": recovered.timestamp() - killed_at if recovered else float("nan"),
            "rerun_after": attempt2[2] - killed_at,
            "other_worker": survivor.owns(attempt2[1]),
        }
    finally:
        cluster.stop()
        purge(env["STEVORA_QUEUE"])


# --- report ----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _spread(values: list[float], fmt: Callable[[float], str]) -> str:
    return f"{fmt(min(values))}..{fmt(max(values))}" if len(values) > 1 else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50, help="sequential runs for (a) [50]")
    parser.add_argument("--burst", type=int, default=200, help="runs started at once for (b) [200]")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of (a)+(b), alternating which system goes first; medians reported [3]")
    parser.add_argument("--leases", default="default,3",
                        help="recovery (c): comma-separated STEVORA_LEASE_SECONDS values; 'default' = unset "
                             "(30 s); empty to skip [default,3]")
    parser.add_argument("--kill-after", type=float, default=2.0,
                        help="seconds into the long step at which its worker is SIGKILLed [2]")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="prefork pool processes per worker, the same for both systems [1]")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--broker-url", default=os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER))
    args = parser.parse_args(argv)

    global CONCURRENCY
    CONCURRENCY = args.concurrency
    configure_environment(args.database_url, args.broker_url)
    ensure_database(args.database_url)
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    call_command("migrate", verbosity=0)
    reset_database()
    load_bench_workflows()
    env = dict(os.environ)
    purge(env["STEVORA_QUEUE"])
    purge(env["BENCH_RAW_QUEUE"])
    print(f"engine overhead: {STEPS} no-op steps; {args.runs} sequential runs; {args.burst} runs at once; "
          f"{args.repeat} round(s); 2 prefork workers (-c {args.concurrency}) each; "
          f"PostgreSQL {args.database_url.rsplit('/', 1)[1]}, "
          f"Redis {args.broker_url}", flush=True)

    results: dict[str, dict[str, list[float]]] = {k: {"step": [], "tput": []} for k in ("stevora", "raw")}
    cpu: dict[str, dict[str, float]] = {k: dict.fromkeys(CpuMeter.PARTS, 0.0) for k in ("stevora", "raw")}
    fast = [0, 0]
    reused = True
    try:
        if args.repeat > 0:
            stevora = Cluster("stevora", env).start()
            raw = Cluster("raw", env).start()
            # Warm up (imports, connections, caches) outside the measurements.
            stevora_sequential(3)
            raw_sequential(3)
            for round_no in range(args.repeat):
                order = ["stevora", "raw"] if round_no % 2 == 0 else ["raw", "stevora"]
                for kind in order:
                    if kind == "stevora":
                        since = timezone.now()
                        before = worker_backends()
                        steps = stevora_sequential(args.runs)
                        reused = reused and before <= worker_backends()
                        with CpuMeter(stevora) as meter:
                            tput = stevora_burst(args.burst)
                        share = fast_path_share(since)
                        fast = [fast[0] + share[0], fast[1] + share[1]]
                    else:
                        steps = raw_sequential(args.runs)
                        with CpuMeter(raw) as meter:
                            tput = raw_burst(args.burst)
                    for part, seconds in meter.spent.items():
                        cpu[kind][part] += seconds
                    results[kind]["step"].append(statistics.median(steps))
                    results[kind]["tput"].append(tput)
                    print(f"  round {round_no + 1} {kind:8s} per-step {_ms(statistics.median(steps))} ms "
                          f"(p90 {_ms(sorted(steps)[int(len(steps) * 0.9) - 1])} ms), {tput:.0f} steps/s", flush=True)
            stevora.stop()
            raw.stop()

            ours_step, raw_step = (statistics.median(results[k]["step"]) for k in ("stevora", "raw"))
            ours_tput, raw_tput = (statistics.median(results[k]["tput"]) for k in ("stevora", "raw"))
            print()
            print(f"{'measurement':40s} {'stevora':>10s} {'raw chain':>10s} {'ours/raw':>9s}  target")
            print(f"{'(a) per-step overhead, median (ms)':40s} {_ms(ours_step):>10s} {_ms(raw_step):>10s} "
                  f"{ours_step / raw_step:>9.2f}  <= 1.0")
            print(f"{'(b) throughput (steps/s)':40s} {ours_tput:>10.0f} {raw_tput:>10.0f} "
                  f"{ours_tput / raw_tput:>9.2f}  >= 1.0")
            print(f"{'    spread over rounds (a) ms':40s} {_spread(results['stevora']['step'], _ms):>10s} "
                  f"{_spread(results['raw']['step'], _ms):>10s}")
            print(f"{'    spread over rounds (b) steps/s':40s} "
                  f"{_spread(results['stevora']['tput'], lambda v: f'{v:.0f}'):>10s} "
                  f"{_spread(results['raw']['tput'], lambda v: f'{v:.0f}'):>10s}")
            step_ratios = [o / r for o, r in zip(results["stevora"]["step"], results["raw"]["step"], strict=True)]
            tput_ratios = [o / r for o, r in zip(results["stevora"]["tput"], results["raw"]["tput"], strict=True)]
            print(f"{'    ratio per round (a), (b)':40s} {' '.join(f'{x:.2f}' for x in step_ratios)}; "
                  f"{' '.join(f'{x:.2f}' for x in tput_ratios)} (medians {statistics.median(step_ratios):.2f}, "
                  f"{statistics.median(tput_ratios):.2f})")
            for kind in ("stevora", "raw"):
                per_step = {part: seconds / (args.burst * STEPS * args.repeat) * 1000
                            for part, seconds in cpu[kind].items()}
                print(f"{'    CPU per step in (b), ' + kind + ' (ms)':40s} {sum(per_step.values()):>10.3f} = "
                      + ", ".join(f"{part} {ms:.3f}" for part, ms in per_step.items()))
            print(f"fast path: {fast[0]}/{fast[1]} task steps claimed by the worker that committed their "
                  f"predecessor (no broker message); worker DB connections reused across tasks: "
                  f"{'yes' if reused else 'NO'}")

        leases = [x.strip() for x in args.leases.split(",") if x.strip()]
        if leases:
            print()
            print(f"(c) recovery: SIGKILL of the worker process group {args.kill_after:g}s into a long step -> "
                  f"the step running again on the other worker (reconcile every 2 s)")
            print(f"{'STEVORA_LEASE_SECONDS':24s} {'recovered (s)':>14s} {'running again (s)':>18s}  other worker")
            for value in leases:
                lease = None if value == "default" else float(value)
                res = recovery(env, lease, args.kill_after)
                label = f"{res['lease']:g}" + (" (default)" if res["default"] else "")
                print(f"{label:24s} {res['recovered_after']:>14.2f} {res['rerun_after']:>18.2f}  "
                      f"{'yes' if res['other_worker'] else 'NO'}", flush=True)
    finally:
        for proc in _procs:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
