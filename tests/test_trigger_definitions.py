"""Triggers in definitions: clear load errors naming the path, schedules and event triggers
kept in sync with the latest version, and the catch-up arithmetic of ticks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events.models import EventTrigger
from runs.definitions import DefinitionError
from runs.services import load_workflow
from schedules import ticks
from schedules.models import Schedule
from schedules.services import pause_schedule


def definition(*triggers: dict[str, Any], name: str = "nightly", **extra: Any) -> dict[str, Any]:
    return {"name": name, "steps": [{"name": "a", "type": "task", "handler": "test.value"}],
            "triggers": list(triggers), **extra}


NEEDS_N = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

BAD = [
    ({"cron": "61 * * * *"}, {}, "triggers[0].cron", "not a valid cron expression"),
    ({"cron": "* * *"}, {}, "triggers[0].cron", "five-field"),
    ({"cron": "*/5 * * * *", "timezone": "Mars/Olympus"}, {}, "triggers[0].timezone", "unknown time zone"),
    ({"every_seconds": 0}, {}, "triggers[0].every_seconds", "minimum"),
    ({"every_seconds": 5, "cron": "* * * * *"}, {}, "triggers[0]", "exactly one of"),
    ({"input": {}}, {}, "triggers[0]", "exactly one of"),
    ({"every_seconds": 5, "catch_up": "some"}, {}, "triggers[0].catch_up", "is not one of"),
    ({"every_seconds": 5, "timezone": "UTC"}, {}, "triggers[0].timezone", "only a cron trigger"),
    ({"every_seconds": 5, "key": "k"}, {}, "triggers[0].key", "only an event trigger"),
    ({"event": "paid", "catch_up": "all"}, {}, "triggers[0].catch_up", "only a schedule"),
    ({"event": "paid", "if": "event.key =="}, {}, "triggers[0].if", "invalid expression"),
    ({"every_seconds": 5, "input": {"n": "x"}}, {"input_schema": NEEDS_N}, "triggers[0].input.n", "not of type"),
    ({"every_seconds": 5}, {"input_schema": NEEDS_N}, "triggers[0].input", "'n' is a required property"),
    ({"every_seconds": 5, "input": {"n": "{{ 1 }}"}}, {}, "triggers[0].input.n", "templates are for event"),
    ({"every_seconds": 5, "stray": 1}, {}, "triggers[0]", "unknown field"),
]


@pytest.mark.parametrize("trigger, extra, path, words", BAD, ids=[f"{b[2]}:{b[3]}" for b in BAD])
def test_a_bad_trigger_is_refused_with_its_path_and_nothing_is_stored(
        db: Any, trigger: dict[str, Any], extra: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(DefinitionError) as refused:
        load_workflow(definition(trigger, **extra))
    assert any(p == path and words in m for p, m in refused.value.errors), refused.value.errors
    assert not Schedule.objects.exists() and not EventTrigger.objects.exists()


def test_loading_triggers_makes_one_schedule_per_timed_trigger_and_one_event_trigger_per_event(db: Any) -> None:
    load_workflow(definition({"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin", "catch_up": "skip"},
                             {"every_seconds": 60, "input": {"n": 1}},
                             {"event": "order.paid", "key": "eu", "if": "event.payload.amount > 10"},
                             input_schema={"type": "object", "properties": {"n": {"type": "integer"}}}))
    cron, every = Schedule.objects.order_by("trigger_index")
    assert (cron.kind, cron.cron, cron.timezone, cron.catch_up) == ("cron", "0 9 * * 1-5", "Europe/Berlin", "skip")
    berlin = cron.next_fire_at.astimezone(ticks.ZoneInfo("Europe/Berlin"))
    assert (berlin.hour, berlin.minute) == (9, 0) and berlin.weekday() < 5
    assert (every.kind, every.every_seconds, every.catch_up, every.input) == ("every", 60, "one", {"n": 1})
    trigger = EventTrigger.objects.get()
    assert (trigger.trigger_index, trigger.name, trigger.key, trigger.condition) == (
        2, "order.paid", "eu", "event.payload.amount > 10")


def test_a_new_version_replaces_the_triggers_and_an_unchanged_schedule_keeps_its_tick_and_pause(db: Any) -> None:
    load_workflow(definition({"every_seconds": 60}, {"cron": "*/5 * * * *"}, {"event": "a"}))
    first, second = Schedule.objects.order_by("trigger_index")
    pause_schedule(first.pk)
    version2 = load_workflow(definition({"every_seconds": 60, "catch_up": "all"}, {"event": "b"})).workflow
    assert version2.version == 2
    kept = Schedule.objects.get()
    assert (kept.pk, kept.paused, kept.next_fire_at, kept.catch_up) == (first.pk, True, first.next_fire_at, "all")
    assert kept.workflow == version2
    assert list(EventTrigger.objects.values_list("name", "trigger_index", "workflow")) == [("b", 1, version2.pk)]
    load_workflow(definition({"every_seconds": 30}))
    changed = Schedule.objects.get()
    assert changed.every_seconds == 30 and changed.next_fire_at != first.next_fire_at
    assert not EventTrigger.objects.exists()


class Timing:
    def __init__(self, catch_up: str, every_seconds: int | None = None, cron: str = "",
                 timezone: str = "UTC") -> None:
        self.kind = "every" if every_seconds else "cron"
        self.every_seconds = every_seconds
        self.cron = cron
        self.timezone = timezone
        self.catch_up = catch_up


NOW = datetime(2026, 3, 10, 12, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize("catch_up, fired", [("skip", 0), ("one", 1), ("all", 6)])
def test_after_five_hours_down_an_hourly_schedule_fires_per_its_catch_up_policy(catch_up: str, fired: int) -> None:
    for timing in (Timing(catch_up, every_seconds=3600), Timing(catch_up, cron="50 * * * *")):
        plan = ticks.plan(timing, datetime(2026, 3, 10, 6, 50, tzinfo=UTC), NOW)
        assert len(plan.ticks) == fired and plan.due == 6
        assert plan.next_fire_at == datetime(2026, 3, 10, 12, 50, tzinfo=UTC)
        if fired:
            assert plan.ticks[-1] == datetime(2026, 3, 10, 11, 50, tzinfo=UTC)


@pytest.mark.parametrize("catch_up", ["skip", "one", "all"])
def test_a_tick_due_just_now_fires_under_every_policy(catch_up: str) -> None:
    plan = ticks.plan(Timing(catch_up, every_seconds=60), NOW - timedelta(seconds=2), NOW)
    assert plan.ticks == [NOW - timedelta(seconds=2)] and plan.next_fire_at == NOW + timedelta(seconds=58)


def test_catch_up_all_is_bounded_to_the_most_recent_ticks() -> None:
    plan = ticks.plan(Timing("all", every_seconds=1), NOW - timedelta(days=1), NOW)
    assert len(plan.ticks) == ticks.MAX_CATCH_UP and plan.ticks[-1] == NOW and plan.due == 86401


def test_a_cron_schedule_follows_its_time_zone_across_daylight_saving() -> None:
    timing = Timing("one", cron="30 2 * * *", timezone="Europe/Berlin")
    # 2026-03-29: Berlin skips from 02:00 to 03:00, so that night's 02:30 fires at 03:00 CEST.
    assert ticks.first_tick(timing, datetime(2026, 3, 28, 12, 0, tzinfo=UTC)) == datetime(2026, 3, 29, 1, 0,
                                                                                           tzinfo=UTC)
    # 2026-10-25: 02:30 happens twice; it fires once, at the first (CEST, 00:30 UTC).
    autumn = ticks.first_tick(timing, datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    assert autumn == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert ticks.next_tick_after(timing, autumn, autumn) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)
    summer = ticks.first_tick(timing, datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    assert summer == datetime(2026, 6, 2, 0, 30, tzinfo=UTC)  # 02:30 CEST
