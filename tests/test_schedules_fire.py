# mypy: disable-error-code="index"
"""Schedules with a real engine (its beat runs the schedule sweep): one run per tick with
sweepers racing, the catch-up policy after downtime, pause and resume."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection

from runs.models import Run, RunEvent
from schedules.models import Schedule, ScheduleTick
from schedules.services import fire_due_schedules, pause_schedule, resume_schedule
from steps import clock
from tests.conftest import wait_for_run
from tests.support.workers import wait_until


def ticking(name: str, every: int, **trigger: Any) -> dict[str, Any]:
    return {"name": name, "steps": [{"name": "a", "type": "task", "handler": "test.value",
                                     "config": {"value": "{{ input.n }}"}}],
            "input_schema": {"type": "object", "required": ["n"]},
            "triggers": [{"every_seconds": every, "input": {"n": 7}, **trigger}]}


def race(seconds: float, sweepers: int, until: Any = None) -> int:
    """Call the sweep from ``sweepers`` threads (each its own connection) for ``seconds``, or
    until ``until()`` holds (checked between sweeps)."""
    stop = time.monotonic() + seconds
    failures: list[BaseException] = []
    start = threading.Barrier(sweepers)
    done = threading.Event()

    def sweep() -> None:
        try:
            start.wait()
            while time.monotonic() < stop and not done.is_set():
                fire_due_schedules()
                if until is not None and until():
                    done.set()
                time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(sweepers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    return sweepers


def test_a_schedule_fires_each_tick_once_while_the_beat_and_two_more_sweepers_race(
        engine: Any, workflow: Any) -> None:
    workflow(ticking("every-second", 1))
    schedule = Schedule.objects.get()
    # Two sweeping threads, and the engine's beat meanwhile, until three ticks have fired.
    race(20, sweepers=2, until=lambda: ScheduleTick.objects.filter(schedule=schedule).count() >= 3)
    pause_schedule(schedule.pk)
    fired = list(ScheduleTick.objects.filter(schedule=schedule).order_by("tick"))
    assert len(fired) >= 3
    runs = Run.objects.filter(workflow_name="every-second")
    assert runs.count() == len(fired) and all(t.run_id for t in fired)
    triggered = list(RunEvent.objects.filter(kind="run_triggered", run__workflow_name="every-second")
                     .values_list("data", flat=True))
    assert sorted(d["tick"] for d in triggered) == [t.tick.isoformat() for t in fired]
    assert {d["trigger"] for d in triggered} == {0} and {d["schedule"] for d in triggered} == {schedule.pk}
    for tick in fired:
        run = wait_for_run(tick.run_id)
        assert run.status == "completed" and run.output == 7 and run.input == {"n": 7}


@pytest.mark.parametrize("catch_up, fired", [("skip", 0), ("one", 1), ("all", 6)])
def test_after_five_hours_of_downtime_an_hourly_schedule_catches_up_per_its_policy(
        engine: Any, workflow: Any, catch_up: str, fired: int) -> None:
    workflow(ticking(f"hourly-{catch_up}", 3600, catch_up=catch_up))
    schedule = Schedule.objects.get()
    now = clock.now()
    # No beat ran for five hours: the first unfired tick is 5 h 10 min ago (6 ticks due).
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=now - timedelta(hours=5, minutes=10))
    wait_until(lambda: Schedule.objects.get(pk=schedule.pk).next_fire_at > now, timeout=20,
               message="the beat's sweep to take the schedule")
    after = Schedule.objects.get(pk=schedule.pk)
    assert after.next_fire_at == now + timedelta(minutes=50)
    ticks = list(ScheduleTick.objects.filter(schedule=schedule).order_by("tick").values_list("tick", flat=True))
    assert len(ticks) == fired
    if fired:
        assert ticks[-1] == now - timedelta(minutes=10)
        assert ticks == [now - timedelta(minutes=10, hours=h) for h in range(fired - 1, -1, -1)]
    runs = list(Run.objects.filter(workflow_name=f"hourly-{catch_up}"))
    assert len(runs) == fired
    for run in runs:
        assert wait_for_run(run.pk).status == "completed"


def test_a_paused_schedule_fires_nothing_and_resumes_at_the_next_tick_without_a_burst(
        engine: Any, workflow: Any) -> None:
    workflow(ticking("pausable", 1))
    schedule = Schedule.objects.get()
    wait_until(lambda: ScheduleTick.objects.filter(schedule=schedule).exists(), timeout=20,
               message="a first tick")
    pause_schedule(schedule.pk)
    paused_ticks = ScheduleTick.objects.filter(schedule=schedule).count()
    # Paused for "an hour": the beat keeps sweeping and fires none of those ticks.
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=clock.now() - timedelta(hours=1))
    time.sleep(1.0)
    assert ScheduleTick.objects.filter(schedule=schedule).count() == paused_ticks
    resumed_at = clock.now()
    resumed, changed = resume_schedule(schedule.pk)
    assert changed and not resumed.paused and resumed.next_fire_at > resumed_at
    wait_until(lambda: ScheduleTick.objects.filter(schedule=schedule).count() > paused_ticks, timeout=20,
               message="a tick after resuming")
    pause_schedule(schedule.pk)
    late = ScheduleTick.objects.filter(schedule=schedule, tick__lt=resumed_at).count()
    assert late == paused_ticks  # no tick from the paused hour was fired
    assert Run.objects.filter(workflow_name="pausable").count() == ScheduleTick.objects.filter(
        schedule=schedule).count()


def test_two_engines_each_with_its_own_beat_fire_each_tick_once(fresh_engine: Any, workflow: Any) -> None:
    fresh_engine()
    fresh_engine()
    workflow(ticking("two-beats", 1))
    schedule = Schedule.objects.get()
    wait_until(lambda: ScheduleTick.objects.filter(schedule=schedule).count() >= 2, timeout=20,
               message="two ticks")
    pause_schedule(schedule.pk)
    fired = list(ScheduleTick.objects.filter(schedule=schedule))
    assert Run.objects.filter(workflow_name="two-beats").count() == len(fired)
    assert all(t.run_id for t in fired)
    assert RunEvent.objects.filter(kind="run_triggered", run__workflow_name="two-beats").count() == len(fired)


def test_sweeps_started_at_the_same_moment_fire_six_missed_ticks_six_times_in_all(
        transactional_db: Any) -> None:
    from runs.services import load_workflow

    load_workflow(ticking("released-together", 3600, catch_up="all"))
    schedule = Schedule.objects.get()
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=clock.now() - timedelta(hours=5, minutes=10))
    race(0.5, sweepers=4)
    assert ScheduleTick.objects.filter(schedule=schedule).count() == 6
    assert Run.objects.filter(workflow_name="released-together").count() == 6


def test_a_tick_fired_already_is_never_fired_again_even_if_next_fire_at_is_moved_back(db: Any) -> None:
    from runs.services import load_workflow
    from schedules.services import fire_schedule

    load_workflow(ticking("rewound", 3600, catch_up="all"))
    schedule = Schedule.objects.get()
    past = clock.now() - timedelta(minutes=10)
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=past)
    assert fire_schedule(schedule.pk) == 1
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=past)  # e.g. a stale write
    assert fire_schedule(schedule.pk) == 0
    assert Schedule.objects.get(pk=schedule.pk).next_fire_at > clock.now()
    assert ScheduleTick.objects.filter(schedule=schedule).count() == 1
    assert Run.objects.filter(workflow_name="rewound").count() == 1
