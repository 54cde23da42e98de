"""Retention: purge finished runs older than their workspace's retention, in small batches.

A run is purged with everything it owns: its steps, history, and what the plug-in apps
keep per run. Rows that point at a run or a step with ``on_delete=CASCADE`` (LLM and tool
calls, approvals, event waits and matches) go with it through Django's delete collector;
rows that only name a run without a foreign key (webhook deliveries name a history row)
are deleted by a *purger* their app registers here with :func:`register_purger` from its
``AppConfig.ready``. This module imports no app above ``runs``.

What is never purged:

- anything of an unfinished run (pending, running, waiting, paused): only completed,
  failed and cancelled runs whose ``finished_at`` is older than the cut-off are candidates;
- a finished child run whose parent is unfinished (the parent's step still waits on it);
- a finished run with an unfinished child run or fork (their links to it would be nulled).

Each batch is one short transaction: lock up to ``batch_size`` candidate rows (``SKIP
LOCKED`` on PostgreSQL, so a run being retried right now is left for the next sweep), check
them again under the lock, run the purgers, delete. Two sweepers at once do no harm.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import router, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.deletion import Collector
from django.utils import timezone

from runs.errors import NotFound
from runs.models import RUN_TERMINAL, Run, Workspace

# purger(run_ids, dry_run) -> rows deleted (or that would be, when dry_run).
Purger = Callable[[list[Any], bool], int]

_purgers: dict[str, Purger] = {}


def register_purger(label: str, fn: Purger) -> None:
    """Delete, inside each purge batch and before its runs, the rows ``label`` keeps for those
    runs without a cascading foreign key. Called with the batch's run ids and ``dry_run``."""
    _purgers[label] = fn


@dataclass
class PurgeReport:
    """What a purge deleted (or would delete, with ``dry_run``): rows per table label."""

    dry_run: bool
    runs: int = 0
    batches: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    # (workspace slug, cut-off) for every workspace the purge looked at.
    policies: list[tuple[str, dt.datetime]] = field(default_factory=list)


def retention_days(workspace: Workspace) -> int | None:
    """The workspace's own retention, or the global default; None: keep forever."""
    if workspace.retention_days:
        return int(workspace.retention_days)
    default = settings.STEVORA.get("RETENTION_DAYS")
    return int(default) if default else None


def candidates(workspace_id: int, cutoff: dt.datetime) -> QuerySet[Run]:
    """Finished runs of the workspace that finished before ``cutoff`` and may go (see module doc)."""
    unfinished_child = Run.objects.filter(parent_run=OuterRef("pk")).exclude(status__in=RUN_TERMINAL)
    unfinished_fork = Run.objects.filter(forked_from=OuterRef("pk")).exclude(status__in=RUN_TERMINAL)
    return (Run.objects
            .filter(workspace_id=workspace_id, status__in=RUN_TERMINAL, finished_at__lt=cutoff)
            .filter(Q(parent_run__isnull=True) | Q(parent_run__status__in=RUN_TERMINAL))
            .exclude(Exists(unfinished_child))
            .exclude(Exists(unfinished_fork)))


def _count_cascade(run_ids: list[Any]) -> Counter[str]:
    """Rows ``Run.objects.filter(pk__in=run_ids).delete()`` would delete, per model label."""
    collector = Collector(using=router.db_for_write(Run))
    collector.collect(list(Run.objects.filter(pk__in=run_ids)))
    # A table may be reached by two paths (an LLM call belongs to its run and to its step):
    # count each row once, as the delete does.
    rows: dict[str, set[Any]] = {}
    for model, instances in collector.data.items():
        rows.setdefault(model._meta.label, set()).update(obj.pk for obj in instances)
    for qs in collector.fast_deletes:
        rows.setdefault(qs.model._meta.label, set()).update(qs.values_list("pk", flat=True))
    return Counter({label: len(pks) for label, pks in rows.items() if pks})


def _purge_batch(run_ids: list[Any], workspace_id: int, cutoff: dt.datetime, dry_run: bool) -> Counter[str]:
    with transaction.atomic():
        # Locked and checked again: a run retried (failed -> running) since the walk stays.
        locked = list(candidates(workspace_id, cutoff).filter(pk__in=run_ids).order_by("pk")
                      .select_for_update(skip_locked=True, of=("self",)).values_list("pk", flat=True))
        if not locked:
            return Counter()
        counts: Counter[str] = Counter()
        for label, purger in _purgers.items():
            counts[label] += purger(locked, dry_run)
        if dry_run:
            counts.update(_count_cascade(locked))
        else:
            _, per_model = Run.objects.filter(pk__in=locked).delete()
            counts.update({label: n for label, n in per_model.items() if n})
        return counts


def purge_runs(*, older_than_days: int | None = None, workspace: str | None = None, dry_run: bool = False,
               batch_size: int | None = None, now: dt.datetime | None = None,
               progress: Callable[[PurgeReport, str], None] | None = None) -> PurgeReport:
    """Purge finished runs past retention; returns the rows deleted per table.

    ``older_than_days`` overrides every workspace's policy (one cut-off for all); without it
    each workspace uses :func:`retention_days` and a workspace that keeps forever is skipped.
    ``workspace`` (a slug) limits the purge to one workspace. ``progress(report, slug)`` is
    called after each batch.
    """
    if older_than_days is not None and older_than_days < 0:
        raise ValueError(f"older_than_days must be 0 or more, got {older_than_days}")
    size = batch_size or int(settings.STEVORA["RETENTION_BATCH_SIZE"])
    now = now or timezone.now()
    workspaces: Iterable[Workspace] = Workspace.objects.order_by("slug")
    if workspace is not None:
        workspaces = list(Workspace.objects.filter(slug=workspace))
        if not workspaces:
            raise NotFound(f"no workspace {workspace!r}")
    report = PurgeReport(dry_run=dry_run)
    for ws in workspaces:
        days = older_than_days if older_than_days is not None else retention_days(ws)
        if days is None:
            continue
        cutoff = now - dt.timedelta(days=days)
        report.policies.append((ws.slug, cutoff))
        _purge_workspace(ws, cutoff, size, dry_run, report, progress)
    return report


def _purge_workspace(ws: Workspace, cutoff: dt.datetime, size: int, dry_run: bool, report: PurgeReport,
                     progress: Callable[[PurgeReport, str], None] | None) -> None:
    # Keyset walk, oldest first, on run_finished_idx: a run left behind (locked, or no longer a
    # candidate) is stepped over instead of being read again, and a dry run moves on too.
    after: tuple[Any, Any] | None = None
    while True:
        page = candidates(ws.pk, cutoff).order_by("finished_at", "pk")
        if after is not None:
            page = page.filter(Q(finished_at__gt=after[0]) | Q(finished_at=after[0], pk__gt=after[1]))
        rows = list(page.values_list("finished_at", "pk")[:size])
        if not rows:
            return
        after = rows[-1]
        counts = _purge_batch([pk for _, pk in rows], ws.pk, cutoff, dry_run)
        report.batches += 1
        report.runs += counts.get("runs.Run", 0)
        report.counts.update(counts)
        if progress is not None:
            progress(report, ws.slug)


def sweep() -> int:
    """The retention sweep (registered by runs.apps): purge by each workspace's policy."""
    return purge_runs().runs
