"""Chaos run: the engine under worker SIGKILLs, a Redis restart and a PostgreSQL restart.

Issue 9. On private instances it creates and removes itself (a PostgreSQL cluster and a
Redis server on free ports under one temporary directory, never the machine's own), it
migrates, loads a workflow of 10 sequential task steps and a fan-out workflow (a
parallel step of three branches, then a map), starts N runs, and runs Celery prefork
workers and one beat against them. Meanwhile it SIGKILLs a random worker (its whole
process group) every few seconds and starts it again, restarts Redis once with every
message lost (kill, then a fresh empty server on the same port) and PostgreSQL once
(``pg_ctl restart -m immediate``), then waits for the runs to drain.

It looks at the engine only from outside: processes, the ``celery``/``manage.py`` entry
points, ``runs.services.start_run`` and the rows of ``Run``, ``StepExecution`` and
``RunEvent``. Side effects are counted by ``bench.chaos_handlers``: every handler call
appends ``start``/``end`` lines (run, step key, attempt, pid, time) to a ledger file.

It prints one table and exits 1 when a target is missed (2 when the setup failed):

- runs completed / total                 target 100 %
- committed steps executed again         target 0  (a handler started with an attempt
  number above the one whose result was committed: the step was claimed again after
  its commit)
- steps completed twice                  target 0  (``step_completed`` history rows)
- joins fired != 1                       target 0  (``step_completed`` rows of each
  parallel/map step)
- re-run delay p50 / p90                 target p90 <= lease + 5 s (from the start of an
  attempt that did not commit to the start of the step's next attempt, from the ledger)
- drain time                             (from the last fault to the last run finished)

    .venv/bin/python -m bench.chaos --profile ci     # 20 runs, about a minute
    .venv/bin/python -m bench.chaos                  # 200 runs, about three minutes

Everything it starts is removed on exit, also on failure, Ctrl-C or SIGTERM (``--keep``
keeps the directory with the logs and the ledger). See bench/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.private_services import PrivatePostgres, PrivateRedis, ServiceError, free_port, kill_group, spawn

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "stevora-chaos"
DATABASE = "stevora_chaos"
SEQ_WORKFLOW = "chaos-sequence"
FAN_WORKFLOW = "chaos-fanout"
SEQ_STEPS = 10
MAP_ITEMS = 6

PROFILES: dict[str, dict[str, Any]] = {
    # Small enough for CI (about a minute with setup), with every fault while work is queued.
    "ci": {"runs": 20, "fanout_share": 0.2, "workers": 3, "concurrency": 1, "step_seconds": 0.25,
           "chaos_seconds": 20.0, "kill_every": (2.0, 4.0), "redis_at": 0.25, "postgres_at": 0.55,
           "drain_timeout": 45.0},
    "default": {"runs": 200, "fanout_share": 0.2, "workers": 3, "concurrency": 2, "step_seconds": 0.3,
                "chaos_seconds": 90.0, "kill_every": (3.0, 8.0), "redis_at": 0.3, "postgres_at": 0.6,
                "drain_timeout": 600.0},
}


# --- cleanup ---------------------------------------------------------------------------


class Cleanup:
    """What to undo, last in first out; runs once, from atexit, a signal or the end of main."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []
        self._done = False

    def add(self, name: str, step: Callable[[], None]) -> None:
        self._steps.append((name, step))

    def run(self) -> None:
        if self._done:
            return
        self._done = True
        while self._steps:
            name, step = self._steps.pop()
            try:
                step()
            except Exception as exc:  # keep undoing the rest
                print(f"chaos: cleanup of {name} failed: {exc}", file=sys.stderr)


def _exit_on_signal(signum: int, frame: Any) -> None:
    # SystemExit unwinds main's finally and atexit: the cleanup runs.
    raise SystemExit(128 + signum)


# --- processes -------------------------------------------------------------------------


class Worker:
    """A Celery process (worker or beat) in its own process group; ready once it touched
    STEVORA_READY_FILE (``stevora_project.celery`` does that when it consumes)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = workdir / f"{name}.log"
        self.ready_file = workdir / f"{name}.ready"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Worker:
        self.ready_file.unlink(missing_ok=True)
        self.proc = spawn(self.argv, self.log, env={**self.env, "STEVORA_READY_FILE": str(self.ready_file)},
                          cwd=ROOT)
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.proc.returncode}:\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} not ready after {timeout}s:\n{_tail(self.log)}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        kill_group(self.proc)


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "stevora_project", *args]


# --- the run ---------------------------------------------------------------------------


@dataclass
class Faults:
    kills: int = 0
    redis_restarts: int = 0
    postgres_restarts: int = 0
    last_fault: float = 0.0  # wall clock
    notes: list[str] = field(default_factory=list)


def workflows(step_seconds: float) -> list[dict[str, Any]]:
    work = {"type": "task", "handler": "chaos.work", "config": {"seconds": step_seconds}}
    sequence = {"name": SEQ_WORKFLOW, "steps": [{"name": f"s{i}", **work} for i in range(SEQ_STEPS)]}
    fanout = {"name": FAN_WORKFLOW, "steps": [
        {"name": "prepare", **work},
        {"name": "fan", "type": "parallel", "branches": {
            branch: [{"name": f"{branch}1", **work}, {"name": f"{branch}2", **work}] for branch in ("a", "b", "c")}},
        {"name": "spread", "type": "map", "over": "{{ input.items }}", "max_concurrency": 3, "step": work},
        {"name": "finish", **work},
    ]}
    return [sequence, fanout]


class Chaos:
    def __init__(self, args: argparse.Namespace, cleanup: Cleanup) -> None:
        self.args = args
        self.cleanup = cleanup
        self.rng = random.Random(args.seed)
        self.workers: list[Worker] = []
        self.faults = Faults()
        self.run_ids: list[str] = []

    def say(self, message: str) -> None:
        if not self.args.quiet:
            print(f"chaos: {message}", file=sys.stderr, flush=True)

    # --- setup ---

    def setup(self) -> None:
        args = self.args
        self.workdir = Path(tempfile.mkdtemp(prefix="stevora-chaos-", dir=args.work_root))
        if args.keep:
            self.cleanup.add("message", lambda: print(f"chaos: kept {self.workdir}", file=sys.stderr))
        else:
            self.cleanup.add("work dir", lambda: shutil.rmtree(self.workdir, ignore_errors=True))
        self.ledger = self.workdir / "ledger.txt"
        self.ledger.touch()
        os.chmod(self.workdir, 0o755)

        self.postgres = PrivatePostgres(self.workdir / "pg", free_port(args.postgres_port))
        self.cleanup.add("PostgreSQL", self.postgres.stop)
        self.postgres.create().start()
        self.postgres.create_database(DATABASE)
        self.redis = PrivateRedis(self.workdir / "redis", free_port(args.redis_port))
        self.cleanup.add("Redis", self.redis.stop)
        self.redis.start()
        self.say(f"PostgreSQL on 127.0.0.1:{self.postgres.port}, Redis on 127.0.0.1:{self.redis.port}, "
                 f"in {self.workdir}")

        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("STEVORA_", "CELERY_", "DATABASE_URL", "CACHE_URL", "PYTEST_"))}
        env.update({
            "DATABASE_URL": self.postgres.url(DATABASE),
            "CELERY_BROKER_URL": self.redis.url(0),
            "DJANGO_SETTINGS_MODULE": "stevora_project.settings",
            "STEVORA_QUEUE": QUEUE,
            "STEVORA_HANDLER_MODULES": "bench.chaos_handlers",
            "STEVORA_LEASE_SECONDS": str(args.lease),
            "STEVORA_RECONCILE_SECONDS": str(args.reconcile),
            "STEVORA_REDISPATCH_SECONDS": str(args.redispatch),
            "STEVORA_VAR_DIR": str(self.workdir / "var"),
            "CHAOS_LEDGER": str(self.ledger),
            "PYTHONPATH": str(ROOT),
        })
        self.env = env
        os.environ.clear()
        os.environ.update(env)  # this driver's Django talks to the same private instances

        self.manage("migrate", "--noinput")
        files = []
        for document in workflows(args.step_seconds):
            path = self.workdir / f"{document['name']}.json"
            path.write_text(json.dumps(document))
            files.append(str(path))
        self.manage("load_workflows", *files)

        # Django (and with it every model) is imported only now that the environment points
        # at the private instances: settings are read once, at import.
        import django

        django.setup()

    def manage(self, *argv: str) -> None:
        done = subprocess.run([sys.executable, "manage.py", *argv], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            raise ServiceError(f"manage.py {argv[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start_processes(self) -> None:
        beat = Worker("beat", _celery("beat", "-s", str(self.workdir / "beat-schedule"), "-l", "WARNING"),
                      self.env, self.workdir)
        self.cleanup.add("beat", beat.kill)
        self.workers = [Worker(f"worker{i}", _celery(
            "worker", "-P", "prefork", "-c", str(self.args.concurrency), "-Q", QUEUE, "-n", f"chaos{i}@%h",
            "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "WARNING"), self.env, self.workdir)
            for i in range(self.args.workers)]
        for worker in self.workers:
            self.cleanup.add(worker.name, worker.kill)
        for proc in [beat, *self.workers]:
            proc.start()

    def start_runs(self) -> None:
        from runs.services import start_run

        fanout = round(self.args.runs * self.args.fanout_share)
        names = [FAN_WORKFLOW] * fanout + [SEQ_WORKFLOW] * (self.args.runs - fanout)
        self.rng.shuffle(names)
        for n, name in enumerate(names):
            run_input: dict[str, Any] = {"items": list(range(MAP_ITEMS))} if name == FAN_WORKFLOW else {"n": n}
            self.run_ids.append(str(start_run(name, run_input, actor="chaos").run.pk))
        self.say(f"started {len(names)} runs ({len(names) - fanout} x {SEQ_STEPS} sequential steps, "
                 f"{fanout} fan-out)")

    # --- faults ---

    def open_runs(self) -> int | None:
        """Runs not finished yet; None while the database cannot be reached (a restart)."""
        from django.db import DatabaseError, connection

        from runs.models import RUN_TERMINAL, Run

        try:
            return Run.objects.filter(pk__in=self.run_ids).exclude(status__in=RUN_TERMINAL).count()
        except DatabaseError:
            connection.close()
            return None

    def chaos(self) -> None:
        args = self.args
        t0 = time.monotonic()
        end = t0 + args.chaos_seconds
        redis_due = t0 + args.chaos_seconds * args.redis_at
        postgres_due = t0 + args.chaos_seconds * args.postgres_at
        next_kill = t0 + self.rng.uniform(*args.kill_every)
        next_look = t0
        while True:
            now = time.monotonic()
            if self.faults.redis_restarts and self.faults.postgres_restarts:
                if now >= end:
                    return
                if now >= next_look:  # every run done: more kills would only hit an idle engine
                    next_look = now + 0.5
                    if self.open_runs() == 0:
                        self.say(f"{now - t0:5.1f}s every run finished; no more faults")
                        return
            if not self.faults.redis_restarts and now >= redis_due:
                self.note_idle("the Redis restart")
                self.redis.restart_empty()
                self.faults.redis_restarts += 1
                self.faults.last_fault = time.time()
                self.say(f"{now - t0:5.1f}s Redis restarted empty on port {self.redis.port}")
            elif not self.faults.postgres_restarts and now >= postgres_due:
                self.note_idle("the PostgreSQL restart")
                self.postgres.restart_immediate()
                self.faults.postgres_restarts += 1
                self.faults.last_fault = time.time()
                self.say(f"{now - t0:5.1f}s PostgreSQL restarted (-m immediate)")
            elif now >= next_kill and now < end:
                worker = self.rng.choice(self.workers)
                worker.kill()
                self.faults.kills += 1
                self.faults.last_fault = time.time()
                self.say(f"{now - t0:5.1f}s SIGKILL {worker.name}; starting it again")
                worker.start()
                next_kill = time.monotonic() + self.rng.uniform(*args.kill_every)
            else:
                time.sleep(0.05)

    def note_idle(self, fault: str) -> None:
        if self.open_runs() == 0:
            self.faults.notes.append(f"every run had finished before {fault}: it hit an idle engine "
                                     "(a profile with more work would test more)")

    def drain(self) -> float | None:
        """Wait for every run to finish; the seconds from the last fault to the last run's end."""
        from runs.models import Run

        deadline = time.monotonic() + self.args.drain_timeout
        while True:
            left = self.open_runs()
            if left == 0:
                break
            if time.monotonic() > deadline:
                self.say(f"{left} runs still open after waiting {self.args.drain_timeout:.0f}s")
                return None
            time.sleep(0.2)
        last = Run.objects.filter(pk__in=self.run_ids).order_by("-finished_at").values_list(
            "finished_at", flat=True).first()
        return max(0.0, last.timestamp() - self.faults.last_fault) if last else None

    # --- what happened ---

    def report(self, drain: float | None) -> int:
        from django.db.models import Count

        from runs.models import Run, RunEvent, RunStatus
        from steps.models import StepExecution

        args = self.args
        total = len(self.run_ids)
        statuses = dict(Run.objects.filter(pk__in=self.run_ids).values_list("status").order_by()
                        .annotate(n=Count("id")))
        completed = statuses.get(RunStatus.COMPLETED, 0)

        # The attempt whose result was committed, from the first step_completed row of each step.
        committed: dict[tuple[str, str], int] = {}
        completions: dict[tuple[str, str], int] = defaultdict(int)
        for run_id, key, data in (RunEvent.objects.filter(run_id__in=self.run_ids, kind="step_completed")
                                  .order_by("id").values_list("run_id", "step_key", "data")):
            step = (str(run_id), key)
            completions[step] += 1
            if step not in committed and isinstance(data, dict) and data.get("attempt") is not None:
                committed[step] = int(data["attempt"])
        completed_twice = sum(1 for n in completions.values() if n > 1)

        fanouts = list(StepExecution.objects.filter(run_id__in=self.run_ids, type__in=("parallel", "map"))
                       .values_list("run_id", "key", "run__status"))
        joins_bad = sum(1 for run_id, key, run_status in fanouts
                        if completions.get((str(run_id), key), 0) > 1
                        or (run_status == RunStatus.COMPLETED and completions.get((str(run_id), key), 0) != 1))

        starts: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
        ends: set[tuple[str, str, int]] = set()
        executions = 0
        for kind, ledger_run, ledger_key, attempt, _pid, at in _ledger(self.ledger):
            if kind == "start":
                executions += 1
                starts[(ledger_run, ledger_key)].setdefault(attempt, at)
            else:
                ends.add((ledger_run, ledger_key, attempt))
        again = sorted(step for step, attempts in starts.items()
                       if step in committed and max(attempts) > committed[step])
        # When the reconciler gave a lost attempt's step back (its step_recovered row), to split
        # each re-run delay into waiting for the sweep and waiting for a worker afterwards.
        recovered_at: dict[tuple[str, str, int], float] = {}
        for run_id, key, data, created in (RunEvent.objects.filter(run_id__in=self.run_ids, kind="step_recovered")
                                           .values_list("run_id", "step_key", "data", "created_at")):
            if isinstance(data, dict) and data.get("attempt") is not None:
                recovered_at.setdefault((str(run_id), key, int(data["attempt"])), created.timestamp())
        delays, to_sweep, to_worker = [], [], []
        for step, attempts in starts.items():
            order = sorted(attempts)
            for earlier, later in zip(order, order[1:], strict=False):
                if committed.get(step) != earlier:  # this attempt did not commit: the step ran again
                    delays.append(attempts[later] - attempts[earlier])
                    swept = recovered_at.get((*step, earlier))
                    if swept is not None:
                        to_sweep.append(swept - attempts[earlier])
                        to_worker.append(attempts[later] - swept)
        cut_short = sum(1 for step, attempts in starts.items() for a in attempts if (*step, a) not in ends)

        p50 = _percentile(delays, 50)
        p90 = _percentile(delays, 90)
        limit = args.lease + 5.0
        rows = [
            ("runs completed / total", f"{completed}/{total}", "100%", completed == total),
            ("committed steps executed again", str(len(again)), "0", not again),
            ("steps completed twice", str(completed_twice), "0", completed_twice == 0),
            ("joins fired != 1", f"{joins_bad} (of {len(fanouts)})", "0", joins_bad == 0),
            (f"re-run delay p50 (n={len(delays)})", _seconds(p50), "", None),
            ("re-run delay p90", _seconds(p90), f"<= {limit:g} s", p90 is None or p90 <= limit),
            (f"  start -> step_recovered p50/p90 (n={len(to_sweep)})",
             f"{_seconds(_percentile(to_sweep, 50))} / {_seconds(_percentile(to_sweep, 90))}", "", None),
            ("  step_recovered -> re-run p50/p90",
             f"{_seconds(_percentile(to_worker, 50))} / {_seconds(_percentile(to_worker, 90))}", "", None),
            ("drain time (last fault -> last run)", _seconds(drain), "", None),
        ]
        seq_runs = total - round(total * args.fanout_share)
        print(f"chaos profile={args.profile} runs={total} ({seq_runs} x {SEQ_STEPS} sequential steps, "
              f"{total - seq_runs} fan-out: parallel 3x2 + map {MAP_ITEMS}) workers={args.workers}x"
              f"-c{args.concurrency} lease={args.lease:g}s reconcile={args.reconcile:g}s "
              f"redispatch={args.redispatch:g}s step={args.step_seconds:g}s seed={args.seed}")
        print(f"faults: {self.faults.kills} worker SIGKILLs (whole process group), {self.faults.redis_restarts} "
              f"Redis restart (all messages lost), {self.faults.postgres_restarts} PostgreSQL restart "
              f"(-m immediate); handler executions {executions}, cut short {cut_short}")
        width = max(len(r[0]) for r in rows) + 2
        print(f"{'metric':<{width}}{'value':>16}  {'target':<10}  ok")
        for name, value, target, ok in rows:
            mark = "" if ok is None else ("yes" if ok else "NO")
            print(f"{name:<{width}}{value:>16}  {target:<10}  {mark}")
        for note in self.faults.notes:
            print(f"note: {note}")
        if completed != total:
            others = {k: v for k, v in statuses.items() if k != RunStatus.COMPLETED}
            print(f"not completed: {others or 'none finished'}; e.g. "
                  + ", ".join(self._describe(run_id) for run_id in self._unfinished()[:3]))
        for step in again[:5]:
            print(f"executed again after its commit: run {step[0]} step {step[1]} (committed attempt "
                  f"{committed[step]}, attempts started {sorted(starts[step])})")
        if delays:
            print("re-run delays (s): " + " ".join(f"{d:.1f}" for d in sorted(delays)))
        else:
            print("note: no attempt was cut short inside a handler, so no re-run delay was measured")
        db_errors = self._database_errors_in_worker_logs()
        if db_errors:
            print(f"worker logs: {db_errors} tasks raised a database error (OperationalError/InterfaceError), "
                  "mostly after the PostgreSQL restart")
        return 0 if all(ok is not False for *_, ok in rows) else 1

    def _database_errors_in_worker_logs(self) -> int:
        count = 0
        for worker in self.workers:
            try:
                text = worker.log.read_text(errors="replace")
            except OSError:
                continue
            count += sum(1 for line in text.splitlines() if "raised unexpected: OperationalError" in line
                         or "raised unexpected: InterfaceError" in line)
        return count

    def _unfinished(self) -> list[str]:
        from runs.models import Run, RunStatus

        return [str(pk) for pk in Run.objects.filter(pk__in=self.run_ids).exclude(
            status=RunStatus.COMPLETED).values_list("pk", flat=True)]

    def _describe(self, run_id: str) -> str:
        from runs.models import Run

        run = Run.objects.get(pk=run_id)
        open_steps = [f"{key}:{status}#{attempt}" for key, status, attempt in run.steps.exclude(
            status="completed").values_list("key", "status", "attempt")[:4]]
        return f"{run_id} [{run.status}] {' '.join(open_steps)}"


def _ledger(path: Path) -> Iterator[tuple[str, str, str, int, int, float]]:
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0] in ("start", "end"):
            yield parts[0], parts[1], parts[2], int(parts[3]), int(parts[4]), float(parts[5])


def _percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every value printed happened)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default")
    parser.add_argument("--runs", type=int, help="runs to start (profile: ci 20, default 200)")
    parser.add_argument("--workers", type=int, help="Celery worker processes (2-3)")
    parser.add_argument("--concurrency", type=int, help="prefork children per worker")
    parser.add_argument("--step-seconds", type=float, help="how long each handler works")
    parser.add_argument("--chaos-seconds", type=float, help="how long workers are SIGKILLed")
    parser.add_argument("--drain-timeout", type=float, help="how long to wait for the runs after the faults")
    parser.add_argument("--lease", type=float, default=3.0, help="STEVORA_LEASE_SECONDS (default 3)")
    parser.add_argument("--reconcile", type=float, default=1.0, help="STEVORA_RECONCILE_SECONDS (default 1)")
    parser.add_argument("--redispatch", type=float, default=5.0, help="STEVORA_REDISPATCH_SECONDS (default 5)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (kills, run order)")
    parser.add_argument("--postgres-port", type=int, default=55432, help="first port tried for PostgreSQL")
    parser.add_argument("--redis-port", type=int, default=56379, help="first port tried for Redis")
    parser.add_argument("--work-root", default=None, help="where the temporary directory goes (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the directory (logs, ledger) at the end")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    args = parser.parse_args(argv)
    for name, value in PROFILES[args.profile].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not 1 <= args.workers <= 8:
        parser.error("--workers must be between 1 and 8")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.step_seconds < 0 or args.chaos_seconds <= 0 or args.drain_timeout <= 0:
        parser.error("--step-seconds, --chaos-seconds and --drain-timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cleanup = Cleanup()
    atexit.register(cleanup.run)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    chaos = Chaos(args, cleanup)
    try:
        started = time.monotonic()
        chaos.setup()
        chaos.start_processes()
        chaos.start_runs()
        chaos.chaos()
        drain = chaos.drain()
        chaos.say(f"done in {time.monotonic() - started:.0f}s; counting")
        return chaos.report(drain)
    except ServiceError as exc:
        print(f"chaos: setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup.run()


if __name__ == "__main__":
    sys.exit(main())
