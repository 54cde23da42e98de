"""Time ``deliver_event`` against many waiting steps (each waiting for its own key).

Usage (a scratch database; never a shared one):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stevora_bench_events \\
        .venv/bin/python bench/event_matching.py --waits 2000

Parks N runs on ``external_event`` steps with distinct keys (no engine needed: the
wait is decided inline when the run starts), then delivers events for some of the
keys and prints milliseconds per delivery, and the query plan of the candidate lookup.
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

from events.services import deliver_event  # noqa: E402
from events.step_type import waits_for  # noqa: E402
from runs.models import Workspace  # noqa: E402
from runs.services import load_workflow, start_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--waits", type=int, default=2000)
    parser.add_argument("--deliveries", type=int, default=200)
    args = parser.parse_args()
    load_workflow({"name": "bench-event-wait", "steps": [
        {"name": "paid", "type": "external_event", "event": "bench.paid", "key": "{{ input.order }}"}]})
    tag = str(int(time.time()))
    t0 = time.perf_counter()
    for i in range(args.waits):
        start_run("bench-event-wait", {"order": f"{tag}-{i}"})
    parked = time.perf_counter() - t0
    print(f"parked {args.waits} runs in {parked:.1f}s ({parked / args.waits * 1000:.1f} ms/run)")
    step = max(1, args.waits // args.deliveries)
    t1 = time.perf_counter()
    matched = 0
    n = 0
    for i in range(0, args.waits, step):
        matched += len(deliver_event("bench.paid", key=f"{tag}-{i}", payload={"i": i}).matched_step_ids)
        n += 1
    took = time.perf_counter() - t1
    print(f"{n} deliveries, {matched} steps completed: {took / n * 1000:.1f} ms per delivery "
          f"(store + match + resume), {args.waits} waits indexed")
    t2 = time.perf_counter()
    for i in range(n):
        deliver_event("bench.paid", key=f"{tag}-nobody-{i}")
    print(f"{n} deliveries matching nothing: {(time.perf_counter() - t2) / n * 1000:.1f} ms each")
    print(waits_for(Workspace.default().pk, "bench.paid", f"{tag}-1").explain())


if __name__ == "__main__":
    main()
