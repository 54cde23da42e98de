"""When a schedule's ticks fall, and which of the due ones a sweep fires (the catch-up policy).

Pure functions over a schedule's timing; ``now`` is always the database's clock
(``steps.clock.now``), passed in by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import cronsim

# A tick fired at most this late still counts as on time (``catch_up: skip`` fires it).
ON_TIME_SECONDS = 60.0
# ``catch_up: all`` fires at most this many missed ticks (the most recent ones) in one go.
MAX_CATCH_UP = 100

_EPSILON = timedelta(microseconds=1)


class Timing(Protocol):
    kind: str
    cron: str
    timezone: str
    every_seconds: int | None
    catch_up: str


@dataclass(frozen=True)
class Plan:
    ticks: list[datetime]  # the ticks to fire now, oldest first
    due: int  # how many ticks were due (at least len(ticks); for cron counted up to MAX_CATCH_UP + 1)
    next_fire_at: datetime  # the first tick after now


def first_tick(timing: Timing, now: datetime) -> datetime:
    """The first tick after ``now`` of a new (or resumed from scratch) schedule."""
    if timing.kind == "every":
        return now + timedelta(seconds=int(timing.every_seconds or 1))
    return _cron_after(timing, now)


def next_tick_after(timing: Timing, anchor: datetime, now: datetime) -> datetime:
    """The first tick after ``now`` on the grid through ``anchor`` (a past tick)."""
    if timing.kind == "every":
        period = timedelta(seconds=int(timing.every_seconds or 1))
        if now < anchor:
            return anchor
        return anchor + ((now - anchor) // period + 1) * period
    return _cron_after(timing, now)


def plan(timing: Timing, next_fire_at: datetime, now: datetime) -> Plan:
    """Which due ticks (``next_fire_at`` .. ``now``) to fire, per the catch-up policy.

    - ``all``: every due tick, oldest first, at most ``MAX_CATCH_UP`` (the latest ones);
    - ``one``: the latest due tick only, however late (one run for a missed stretch);
    - ``skip``: the latest due tick if it is on time (at most ``ON_TIME_SECONDS`` late),
      else none: ticks missed while no beat ran are dropped.
    In normal operation one tick is due and every policy fires it.
    """
    limit = MAX_CATCH_UP if timing.catch_up == "all" else 1
    if now < next_fire_at:
        return Plan([], 0, next_fire_at)
    if timing.kind == "every":
        period = timedelta(seconds=int(timing.every_seconds or 1))
        due = (now - next_fire_at) // period + 1
        tail = [next_fire_at + k * period for k in range(max(0, due - limit), due)]
        following = next_fire_at + due * period
    else:
        tail = _cron_back(timing, next_fire_at, now, MAX_CATCH_UP + 1)
        due = len(tail)
        tail = tail[-limit:]
        following = _cron_after(timing, now)
    if timing.catch_up == "skip" and (now - tail[-1]).total_seconds() > ON_TIME_SECONDS:
        tail = []
    return Plan(tail, due, following)


def _zone(timing: Timing) -> ZoneInfo:
    return ZoneInfo(timing.timezone or "UTC")


def _cron_after(timing: Timing, moment: datetime) -> datetime:
    tz = _zone(timing)
    tick: datetime = next(cronsim.CronSim(timing.cron, moment.astimezone(tz)))
    return tick.astimezone(moment.tzinfo)


def _cron_back(timing: Timing, since: datetime, now: datetime, limit: int) -> list[datetime]:
    """Up to ``limit`` ticks in [since, now], latest ones, oldest first."""
    tz = _zone(timing)
    found: list[datetime] = []
    for tick in cronsim.CronSim(timing.cron, (now + _EPSILON).astimezone(tz), reverse=True):
        if tick < since or len(found) >= limit:
            break
        found.append(tick.astimezone(now.tzinfo))
    return found[::-1]
