"""Time the schedule sweep and event triggers.

Usage (a scratch, migrated database; never a shared one):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stevora_bench_schedules \\
        .venv/bin/python bench/schedule_sweep.py --schedules 500

Loads N workflows with an ``every_seconds`` trigger, makes every schedule due (one tick
each), and prints how long the sweeps (``fire_due_schedules``) take to fire them all
(a run started per tick), then how long a sweep with nothing due takes. Then loads N
workflows with an ``event`` trigger on one name and prints how long one delivery takes
to start their N runs. No engine is needed: the runs start and wait for a worker.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stevora_project.settings")
os.environ.setdefault("STEVORA_HANDLER_MODULES", "bench.handlers")

import django  # noqa: E402

django.setup()

from events.services import deliver_event  # noqa: E402
from runs.services import load_workflow  # noqa: E402
from schedules.models import Schedule  # noqa: E402
from schedules.services import fire_due_schedules  # noqa: E402
from steps import clock  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schedules", type=int, default=500, help="workflows with a schedule (and with an "
                                                                   "event trigger)")
    args = parser.parse_args()
    tag = str(int(time.time()))
    step = [{"name": "a", "type": "task", "handler": "bench.noop"}]
    for i in range(args.schedules):
        load_workflow({"name": f"bench-tick-{tag}-{i}", "steps": step, "triggers": [{"every_seconds": 60}]})
    mine = Schedule.objects.filter(workflow_name__startswith=f"bench-tick-{tag}-")
    mine.update(next_fire_at=clock.now() - timedelta(seconds=1))
    t0 = time.perf_counter()
    started = sweeps = 0
    while True:  # a sweep takes at most SWEEP_BATCH schedules
        fired = fire_due_schedules()
        if not fired:
            break
        started += fired
        sweeps += 1
    took = time.perf_counter() - t0
    print(f"{sweeps} sweep(s) fired {started} due schedules in {took * 1000:.0f} ms "
          f"({took / max(started, 1) * 1000:.2f} ms per tick: claim + start a run + history)")
    t1 = time.perf_counter()
    for _ in range(20):
        fire_due_schedules()
    print(f"a sweep with nothing due: {(time.perf_counter() - t1) / 20 * 1000:.2f} ms "
          f"({Schedule.objects.count()} schedules)")
    for i in range(args.schedules):
        load_workflow({"name": f"bench-on-{tag}-{i}", "steps": step, "triggers": [{"event": f"bench.{tag}"}]})
    t2 = time.perf_counter()
    delivery = deliver_event(f"bench.{tag}", payload={}, event_id=f"bench-{tag}")
    took = time.perf_counter() - t2
    print(f"one event started {len(delivery.started_runs)} runs through triggers in {took * 1000:.0f} ms "
          f"({took / max(len(delivery.started_runs), 1) * 1000:.2f} ms per run)")
    t3 = time.perf_counter()
    deliver_event(f"bench.{tag}", payload={}, event_id=f"bench-{tag}")
    print(f"the same event id again (a duplicate, nothing started): {(time.perf_counter() - t3) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
