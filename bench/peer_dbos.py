"""The bench workflow on DBOS Transact: 10 no-op steps, each checkpointed in PostgreSQL.

Run by bench/peers.py with the peers' interpreter (.venv-peers); prints one JSON line:
{"per_step": [seconds, ...], "throughput": steps per second}. Workflows run in this
process (DBOS is a library: no broker, no worker processes).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from dbos import DBOS, DBOSConfig

STEPS = 10


@DBOS.step()
def noop(i: int) -> int:
    return i


@DBOS.workflow()
def ten_steps() -> int:
    total = 0
    for i in range(STEPS):
        total += noop(i)
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--database-url", required=True)
    args = parser.parse_args()
    config: DBOSConfig = {"name": "stevora-bench-dbos", "system_database_url": args.database_url,
                          "log_level": "WARNING"}
    DBOS(config=config)
    DBOS.launch()
    for _ in range(3):
        ten_steps()
    per_step = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        ten_steps()
        per_step.append((time.perf_counter() - t0) / STEPS)
    t0 = time.perf_counter()
    handles = [DBOS.start_workflow(ten_steps) for _ in range(args.burst)]
    for handle in handles:
        handle.get_result()
    throughput = args.burst * STEPS / (time.perf_counter() - t0)
    print(json.dumps({"per_step": per_step, "throughput": throughput, "id": str(uuid.uuid4())}))
    DBOS.destroy()


if __name__ == "__main__":
    main()
