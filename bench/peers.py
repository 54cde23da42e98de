"""Stevora next to its peers, in one run, on the same PostgreSQL: DBOS Transact and LangGraph.

The same workflow on each — 10 no-op steps, each step's result durably written before the
next starts:

- **Stevora**: `bench-noop10` through two Celery prefork workers and beat, as in
  `bench/engine_overhead.py` (each step is claimed, run and committed by a worker);
- **DBOS Transact**: a `@DBOS.workflow()` calling a `@DBOS.step()` ten times, in the
  driver's process (DBOS is a library: no broker, no worker process);
- **LangGraph**: a `StateGraph` of 10 nodes compiled with `PostgresSaver`, invoked with
  `durability="sync"` in the driver's process (the burst on a thread pool).

It measures (a) per-step latency, the median over N sequential runs of (run time / 10),
and (b) throughput, steps per second for M runs started at once, and prints ratios
against Stevora. The peers run in their own virtualenv (`.venv-peers`, made with uv from
`bench/requirements-peers.txt` the first time), each in a subprocess, each with its own
database on the same server. Never a test; results go in docs/benchmarks.md.

    .venv/bin/python -m bench.peers                    # --runs 30 --burst 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.engine_overhead import (
    DEFAULT_BROKER,
    DEFAULT_DB,
    ROOT,
    Cluster,
    configure_environment,
    ensure_database,
    load_bench_workflows,
    purge,
    reset_database,
    stevora_burst,
    stevora_sequential,
)

PEERS = {"DBOS Transact": "bench/peer_dbos.py", "LangGraph (PostgresSaver, sync)": "bench/peer_langgraph.py"}
PEER_VENV = ROOT / ".venv-peers"


def peer_python(explicit: str | None) -> str:
    if explicit:
        return explicit
    python = PEER_VENV / "bin" / "python"
    if python.exists():
        return str(python)
    uv = shutil.which("uv") or str(ROOT / ".tools" / "uv" / "bin" / "uv")
    print(f"› creating {PEER_VENV.name} for the peers (uv)", flush=True)
    subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(PEER_VENV)], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(python), "-r",
                    str(ROOT / "bench" / "requirements-peers.txt")], check=True)
    return str(python)


def run_peer(python: str, script: str, db_url: str, runs: int, burst: int) -> dict[str, Any]:
    ensure_database(db_url)
    done = subprocess.run([python, script, "--runs", str(runs), "--burst", str(burst), "--database-url", db_url],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env={k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "PYTHONPATH"))})
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="sequential runs for (a) [30]")
    parser.add_argument("--burst", type=int, default=200, help="runs started at once for (b) [200]")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--broker-url", default=os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER))
    parser.add_argument("--peer-python", default=None, help="the peers' interpreter (default: .venv-peers, made "
                                                            "on first use)")
    args = parser.parse_args(argv)
    python = peer_python(args.peer_python)

    configure_environment(args.database_url, args.broker_url)
    ensure_database(args.database_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    reset_database()
    load_bench_workflows()
    env = dict(os.environ)
    purge(env["STEVORA_QUEUE"])
    print(f"peers: 10 no-op steps; {args.runs} sequential runs; {args.burst} runs at once; PostgreSQL "
          f"{args.database_url.rsplit('/', 1)[0]}", flush=True)
    results: dict[str, tuple[float, float]] = {}
    cluster = Cluster("stevora", env).start()
    try:
        stevora_sequential(3)  # warm up
        steps = stevora_sequential(args.runs)
        results["Stevora (2 Celery workers)"] = (statistics.median(steps), stevora_burst(args.burst))
    finally:
        cluster.stop()
        purge(env["STEVORA_QUEUE"])
    print(f"  Stevora done: {results['Stevora (2 Celery workers)'][0] * 1000:.2f} ms/step", flush=True)
    base = args.database_url.rsplit("/", 1)[0]
    for name, script in PEERS.items():
        db = f"{base}/stevora_bench_{Path(script).stem.removeprefix('peer_')}"
        data = run_peer(python, script, db.replace("postgres://", "postgresql://", 1), args.runs, args.burst)
        results[name] = (statistics.median(data["per_step"]), float(data["throughput"]))
        print(f"  {name} done: {results[name][0] * 1000:.2f} ms/step", flush=True)

    ours_step, ours_tput = results["Stevora (2 Celery workers)"]
    print()
    print(f"{'system':34s} {'ms / step':>10s} {'steps/s':>9s} {'their step / ours':>18s} {'our tput / theirs':>18s}")
    for name, (step, tput) in results.items():
        print(f"{name:34s} {step * 1000:>10.2f} {tput:>9.0f} {step / ours_step:>18.2f} {ours_tput / tput:>18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
