"""Schedules: kept in sync with the latest workflow versions, fired once per tick, paused
and resumed. The one place their rows change (admin, API and the command call these)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import QuerySet

from runs.definitions import DefinitionError, TriggerSpec, spec_for
from runs.errors import NotFound, StartError
from runs.models import Workflow, Workspace, record
from runs.services import start_run
from steps import clock

from . import ticks
from .models import Schedule, ScheduleTick

logger = logging.getLogger("stevora.schedules")

# How many due schedules one sweep takes on; the rest wait for the next sweep.
SWEEP_BATCH = 200


def workflow_stored(sender: Any, instance: Workflow, created: bool, raw: bool = False, **kwargs: Any) -> None:
    """``post_save`` of a Workflow: a new version's schedules replace the old ones."""
    if created and not raw:
        sync_schedules(instance)


def sync_schedules(workflow: Workflow) -> list[Schedule]:
    """Make the workspace's schedules of ``workflow.name`` those of this version.

    Runs inside the transaction that stores the version. A trigger whose timing is
    unchanged keeps its next tick and paused state (reloading does not shift or unpause
    it); a changed one starts at its first tick after now; one that is gone is deleted.
    """
    try:
        spec = spec_for(workflow)
    except DefinitionError as exc:
        # Only load_workflow stores definitions, validated; a row written some other way that
        # is not one schedules nothing rather than failing the save.
        logger.warning("workflow %s v%s: not a valid definition, no schedules: %s", workflow.name,
                       workflow.version, exc)
        return []
    wanted = [t for t in spec.triggers if t.is_schedule]
    now = clock.now()
    existing = {s.trigger_index: s for s in Schedule.objects.filter(workspace_id=workflow.workspace_id,
                                                                    workflow_name=workflow.name)}
    kept: list[Schedule] = []
    for trigger in wanted:
        fields = _fields(trigger)
        schedule = existing.get(trigger.index)
        if schedule is None:
            schedule = Schedule.objects.create(workspace_id=workflow.workspace_id, workflow=workflow,
                                               workflow_name=workflow.name, trigger_index=trigger.index,
                                               next_fire_at=ticks.first_tick(Timing(fields), now), **fields)
        else:
            changes: dict[str, Any] = {"workflow": workflow, "catch_up": fields["catch_up"], "input": fields["input"]}
            if schedule.timing() != (fields["kind"], fields["cron"], fields["timezone"], fields["every_seconds"]):
                changes.update(fields, next_fire_at=ticks.first_tick(Timing(fields), now))
            # Only these columns: a sweep may be moving next_fire_at right now, and writing back
            # the value read above would make it fire a tick again.
            Schedule.objects.filter(pk=schedule.pk).update(**changes)
            schedule.refresh_from_db()
        kept.append(schedule)
    (Schedule.objects.filter(workspace_id=workflow.workspace_id, workflow_name=workflow.name)
     .exclude(trigger_index__in=[t.index for t in wanted]).delete())
    return kept


class Timing:
    """A trigger's timing fields as ``schedules.ticks`` reads them."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.kind: str = fields["kind"]
        self.cron: str = fields["cron"]
        self.timezone: str = fields["timezone"]
        self.every_seconds: int | None = fields["every_seconds"]
        self.catch_up: str = fields["catch_up"]


def _fields(trigger: TriggerSpec) -> dict[str, Any]:
    return {"kind": trigger.kind, "cron": trigger.cron if trigger.kind == "cron" else "",
            "timezone": trigger.timezone if trigger.kind == "cron" else "UTC",
            "every_seconds": trigger.every_seconds, "catch_up": trigger.catch_up, "input": trigger.input or {}}


def fire_due_schedules() -> int:
    """The sweep: fire every active schedule whose next tick has come (database clock).

    Safe to run in several processes at once: a schedule is taken with ``SKIP LOCKED``
    on PostgreSQL, ``next_fire_at`` moves on only by a guarded UPDATE, and a tick is a
    unique row whose run has an idempotency key derived from it.
    """
    now = clock.now()
    due = list(Schedule.objects.filter(paused=False, next_fire_at__lte=now)
               .order_by("next_fire_at").values_list("pk", flat=True)[:SWEEP_BATCH])
    started = 0
    for pk in due:
        started += fire_schedule(pk)
    return started


def fire_schedule(pk: int) -> int:
    """Fire the due ticks of one schedule (per its catch-up policy); returns runs started."""
    with transaction.atomic():
        now = clock.now()
        qs = Schedule.objects.filter(pk=pk, paused=False, next_fire_at__lte=now)
        if connection.vendor == "postgresql":
            qs = qs.select_for_update(skip_locked=True)  # another beat has it: this tick is its job
        schedule = qs.first()
        if schedule is None:
            return 0
        plan = ticks.plan(schedule, schedule.next_fire_at, now)
        last = plan.ticks[-1] if plan.ticks else schedule.last_tick_at
        # The guard: only the sweep that moves next_fire_at away from the value it read fires.
        moved = (Schedule.objects.filter(pk=pk, paused=False, next_fire_at=schedule.next_fire_at)
                 .update(next_fire_at=plan.next_fire_at, last_tick_at=last))
        if moved != 1:
            return 0
        if plan.due > len(plan.ticks):
            logger.info("schedule %s (%s) missed %d tick(s) before %s; catch_up %s fires %d",
                        pk, schedule.describe(), plan.due, now.isoformat(), schedule.catch_up, len(plan.ticks))
        started = 0
        for tick in plan.ticks:
            started += _start_for_tick(schedule, tick)
    return started


def _start_for_tick(schedule: Schedule, tick: datetime) -> int:
    """Claim the tick (its unique row) and start its run; a tick already claimed starts nothing."""
    stamp = tick.isoformat()
    actor = f"schedule:{schedule.pk}"
    try:
        with transaction.atomic():
            claimed = ScheduleTick.objects.create(schedule=schedule, tick=tick)
    except IntegrityError:
        logger.warning("schedule %s: the tick at %s was fired already", schedule.pk, stamp)
        return 0
    try:
        with transaction.atomic():
            result = start_run(schedule.workflow_name, schedule.input, workspace=schedule.workspace_id,
                               idempotency_key=f"schedule:{schedule.pk}:{stamp}", actor=actor)
            if result.created:
                record(result.run.pk, "run_triggered", actor=actor,
                       message=f"started by trigger {schedule.trigger_index} ({schedule.describe()}) "
                               f"for the tick at {stamp}",
                       data={"trigger": schedule.trigger_index, "kind": schedule.kind, "schedule": schedule.pk,
                             "tick": stamp})
    except StartError as exc:
        logger.warning("schedule %s: no run for the tick at %s: %s", schedule.pk, stamp, exc)
        ScheduleTick.objects.filter(pk=claimed.pk).update(error=str(exc))
        return 0
    ScheduleTick.objects.filter(pk=claimed.pk).update(run=result.run)
    return 1


def schedules_of(workspace: Workspace | None = None) -> QuerySet[Schedule]:
    qs = Schedule.objects.select_related("workspace")
    return qs.filter(workspace=workspace) if workspace is not None else qs


def get_schedule(pk: Any, workspace: Workspace | None = None) -> Schedule:
    try:
        found = schedules_of(workspace).filter(pk=int(pk)).first()
    except (TypeError, ValueError, OverflowError):
        found = None
    if found is None:
        raise NotFound(f"no schedule {pk}")
    return found


def pause_schedule(pk: Any, *, workspace: Workspace | None = None, actor: str = "") -> tuple[Schedule, bool]:
    """Stop firing. (schedule, changed): pausing a paused schedule changes nothing."""
    schedule = get_schedule(pk, workspace)
    changed = Schedule.objects.filter(pk=schedule.pk, paused=False).update(paused=True) == 1
    if changed:
        logger.info("schedule %s paused by %s", schedule.pk, actor or "?")
    schedule.refresh_from_db()
    return schedule, changed


def resume_schedule(pk: Any, *, workspace: Workspace | None = None, actor: str = "") -> tuple[Schedule, bool]:
    """Fire again from the first tick after now: the ticks that fell while paused are not
    fired (no burst). Resuming an active schedule changes nothing."""
    schedule = get_schedule(pk, workspace)
    with transaction.atomic():
        locked = Schedule.objects.select_for_update().filter(pk=schedule.pk, paused=True).first()
        if locked is None:
            schedule.refresh_from_db()
            return schedule, False
        following = ticks.next_tick_after(locked, locked.next_fire_at, clock.now())
        Schedule.objects.filter(pk=locked.pk, paused=True).update(paused=False, next_fire_at=following)
    logger.info("schedule %s resumed by %s", schedule.pk, actor or "?")
    schedule.refresh_from_db()
    return schedule, True


def as_json(schedule: Schedule) -> dict[str, Any]:
    """The shape the API and ``manage.py schedules --json`` show."""
    return {
        "id": schedule.pk, "workflow": schedule.workflow_name, "trigger": schedule.trigger_index,
        "kind": schedule.kind, "cron": schedule.cron or None,
        "timezone": schedule.timezone if schedule.kind == "cron" else None,
        "every_seconds": schedule.every_seconds, "catch_up": schedule.catch_up, "input": schedule.input,
        "status": "paused" if schedule.paused else "active",
        "next_fire_at": schedule.next_fire_at.isoformat(),
        "last_tick_at": schedule.last_tick_at.isoformat() if schedule.last_tick_at else None,
    }
