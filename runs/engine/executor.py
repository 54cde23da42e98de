"""Executing one step (DESIGN §4): claim, execute outside a transaction, fenced commit.

``process_step`` is what the Celery task calls with a step id. A duplicate or stale
message finds nothing to claim and returns. After a fenced commit the engine may hand
this worker the single ready successor it just created (already claimed in the same
transaction), which runs next without a broker round trip — as long as the task stays
within its time budget; past it, the successor is handed back to the queue, so the
per-step limit (``STEVORA_MAX_STEP_SECONDS``) is never a limit on a chain.
"""

from __future__ import annotations

import contextvars
import json
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connections, transaction
from django.db.models import Case, F, PositiveIntegerField, Q, When
from django.db.models.functions import Now

from runs.definitions import RetryPolicy, StepSpec, WorkflowSpec
from runs.models import Run, RunStatus
from steps import clock, logcontext
from steps import types as step_types
from steps.handlers import PermanentError, RetryableError, StepContext
from steps.handlers import registry as handler_registry
from steps.models import StepExecution, StepStatus
from steps.templating import TemplateProblem

from . import hotpath, mapitems, tracing, workers
from . import transitions as t
from .dispatch import can_publish, dispatch_steps
from .effects import Effects
from .faults import fault_point
from .heartbeat import heartbeat
from .timeouts import StepTimeout, run_with_deadline

logger = logging.getLogger("stevora.executor")


class NotJSONSerializable(PermanentError):
    pass


def worker_id() -> str:
    """The ``lease_owner`` of this thread's claims; its ``host:pid`` prefix names the process
    in the worker registry (``workers.process_name``)."""
    return f"{workers.process_name()}:{threading.get_ident() % 100000}"


def lease_seconds() -> float:
    return float(settings.STEVORA["LEASE_SECONDS"])


def step_seconds(spec: StepSpec | None) -> float:
    """The step's deadline: its ``timeout_seconds``, never more than ``STEVORA_MAX_STEP_SECONDS``."""
    limit = float(settings.STEVORA_MAX_STEP_SECONDS)
    if spec is not None and spec.timeout_seconds:
        return min(float(spec.timeout_seconds), limit)
    return limit


def grace_seconds() -> float:
    return float(settings.STEVORA["TIMEOUT_GRACE_SECONDS"])


def chain_seconds() -> float:
    return float(settings.STEVORA["CHAIN_SECONDS"])


def task_budget() -> float:
    """How long one task may run steps back to back (below Celery's hard limit)."""
    return float(settings.STEVORA_MAX_STEP_SECONDS) + grace_seconds()


def process_step(step_id: int) -> None:
    """Claim the step and run it, then any successor handed to us by the commit."""
    started = time.monotonic()
    row = claim(step_id)
    while row is not None:
        row = execute_and_commit(row)
        if row is None:
            return
        spent = time.monotonic() - started
        if spent + _deadline_of(row) > task_budget():
            # The successor would not fit in this task's time: another message runs it.
            hand_back(row, "the task's time budget is spent")
            return
        if spent > chain_seconds():
            # Taking successors ourselves saves a broker round trip per step, but a long run
            # must not keep this worker from the queue: recovered steps (rung ahead of it) and
            # other runs' steps wait for a worker that finishes its task.
            hand_back(row, f"this task has run steps for {spent:.1f}s (STEVORA_CHAIN_SECONDS)")
            return


def _deadline_of(row: StepExecution) -> float:
    try:
        return step_seconds(t.spec_of(t.workflow_spec(row.run), row))
    except Exception:
        return step_seconds(None)


def claim(step_id: int) -> StepExecution | None:
    owner = worker_id()
    if hotpath.available():
        # PostgreSQL: the same conditional UPDATE, returning the row with its run (one round trip).
        claimed = hotpath.claim(step_id, owner, lease_seconds())
        return None if claimed is None else _still_wanted(claimed, owner)
    now = clock.now()
    claimable = Q(status=StepStatus.READY) & (Q(not_before__isnull=True) | Q(not_before__lte=Now()))
    expired = Q(status=StepStatus.RUNNING, lease_until__lt=Now())
    updated = StepExecution.objects.filter(Q(pk=step_id) & (claimable | expired)).update(
        recovery_count=Case(When(status=StepStatus.RUNNING, then=F("recovery_count") + 1),
                            default=F("recovery_count"), output_field=PositiveIntegerField()),
        status=StepStatus.RUNNING, lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds()),
        attempt=F("attempt") + 1, started_at=now,
    )
    if updated != 1:
        return None  # a duplicate or stale doorbell
    return _still_wanted(StepExecution.objects.select_related("run", "run__workflow").get(pk=step_id), owner)


def _still_wanted(row: StepExecution, owner: str) -> StepExecution | None:
    """A claimed step whose run was paused goes back untouched; one whose run ended, or whose
    fan-out step closed (a sibling failed), is cancelled: it must not run."""
    if row.run.status == RunStatus.PAUSED:
        # Paused after this step was published: hand it back untouched.
        StepExecution.objects.filter(pk=row.pk, status=StepStatus.RUNNING, lease_owner=owner).update(
            status=StepStatus.READY, lease_owner="", lease_until=None, attempt=F("attempt") - 1)
        return None
    if row.run.is_terminal or (row.parent_id is not None and not t.parent_open(row)):
        with transaction.atomic():
            run = t.lock_run(row.run_id)
            reason = f"run {run.status}" if run.is_terminal else "its fan-out step ended"
            if _fence(row, owner).update(
                    status=StepStatus.CANCELLED, finished_at=t.now(), lease_owner="", lease_until=None,
                    error=t.error_dict("cancelled", reason, previous_status=StepStatus.READY)) == 1:
                fx = Effects()
                fx.event(run.pk, "step_cancelled", row.key, message=f"claimed after {reason}",
                         data={"previous_status": StepStatus.READY})
                fx.flush()
        return None
    return row


def hand_back(row: StepExecution, why: str, *, delay: float = 0.0) -> None:
    """Give a claimed step back to the queue untouched (its attempt is not spent), to be
    rung again now or after ``delay`` seconds."""
    publish = can_publish()
    now = clock.now()
    not_before = now + timedelta(seconds=delay) if delay else None
    if StepExecution.objects.filter(pk=row.pk, status=StepStatus.RUNNING, lease_owner=row.lease_owner,
                                    attempt=row.attempt).update(
            status=StepStatus.READY, lease_owner="", lease_until=None, attempt=F("attempt") - 1,
            ready_at=now, not_before=not_before, dispatched_at=(not_before or now) if publish else None) == 1:
        logger.info("step %s handed back: %s", row.key, why)
        priorities = {row.pk: row.priority} if row.priority else None
        if delay:
            dispatch_steps([], [(row.pk, delay)], priorities=priorities)
        else:
            dispatch_steps([row.pk], priorities=priorities)


def _without_handler(row: StepExecution, name: str, owner: str) -> None:
    """A task step whose handler this process lacks: another live worker that has it gets it
    (rung again shortly), else it waits, holding no worker, until one registers."""
    if workers.with_handler(name):
        hand_back(row, f"this worker has no handler {name!r}; a live worker has", delay=1.0)
    else:
        logger.warning("step %s waits: %s", row.key, workers.handler_message(name))
        workers.park_for_handler(row, owner, name)


def _context(run: Run, row: StepExecution, config: Any) -> StepContext:
    run_id = str(run.pk)
    return StepContext(
        run_id=run_id, step=row.name, key=row.key, attempt=row.attempt,
        idempotency_key=f"{run_id}:{row.key}:{row.attempt}", step_idempotency_key=f"{run_id}:{row.key}",
        input=run.input, config=config, workflow=run.workflow_name,
        log=logging.LoggerAdapter(logging.getLogger(f"stevora.step.{row.name}"),
                                  {"run_id": run_id, "step": row.key, "attempt": row.attempt}),
        item=row.state.get("item") if row.item_index is not None else None, index=row.item_index,
    )


def execute_and_commit(row: StepExecution) -> StepExecution | None:
    # Every log line about this attempt names it (steps.logcontext; STEVORA_LOG_FORMAT=json).
    with logcontext.step(str(row.run_id), row.key, row.attempt):
        try:
            return _execute_and_commit(row)
        finally:
            if tracing.enabled():  # OTEL_EXPORTER_OTLP_ENDPOINT: the attempt's span, from its rows
                tracing.attempt_finished(row)


def _execute_and_commit(row: StepExecution) -> StepExecution | None:
    run = row.run
    wf = t.workflow_spec(run)
    owner = row.lease_owner
    try:
        spec = t.spec_of(wf, row)
    except Exception as exc:  # a definition that no longer names this step: refuse, do not guess
        return commit_failure(row, None, wf, PermanentError(str(exc)), owner)
    max_recoveries: int = settings.STEVORA["MAX_RECOVERIES"]
    if row.recovery_count > max_recoveries:
        return commit_failure(row, spec, wf, PermanentError(
            f"dead-lettered: the step's worker was lost {row.recovery_count} times "
            f"(limit STEVORA_MAX_RECOVERIES={settings.STEVORA['MAX_RECOVERIES']})"), owner, kind="dead_lettered")
    if row.type == "task" and isinstance(spec.raw.get("handler"), str) and spec.raw["handler"] not in handler_registry:
        _without_handler(row, spec.raw["handler"], owner)
        return None
    step_type = step_types.get(row.type)
    seconds, grace = step_seconds(spec), grace_seconds()
    # The lease is renewed until the deadline has passed and the handler was given its grace.
    heartbeat.hold(row.pk, owner, row.attempt,
                   deadline=clock.now() + timedelta(seconds=seconds + 2 * grace + lease_seconds() / 3))
    rendered: Any = None
    try:
        if step_type is None or not step_type.work:
            raise PermanentError(f"no executor for step type {row.type!r}")
        tctx = t.template_context(run, row)
        try:
            rendered = step_type.render(spec, tctx)
        except TemplateProblem as exc:
            raise PermanentError(str(exc)) from None
        invocation = step_types.Invocation(run=run, step=row, spec=spec, workflow=wf,
                                           ctx=_context(run, row, rendered), template_context=tctx)
        # The handler thread runs in a copy of this context: its log lines name the step too.
        context = contextvars.copy_context()
        output = run_with_deadline(lambda: context.run(step_type.execute, invocation), seconds, grace)
        try:
            # allow_nan=False: NaN is not JSON, and PostgreSQL's jsonb refuses it at commit.
            json.dumps(output, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise NotJSONSerializable(f"handler output is not JSON-serialisable: {exc}") from None
    except step_types.HandBack as back:  # nothing was done (a provider's rate limit): not an attempt
        hand_back(row, back.reason, delay=back.delay)
        return None
    except step_types.Park as park:
        try:
            commit_park(row, park, owner, rendered=rendered)
            return None
        except Exception as exc:  # the park's own writes failed: an ordinary failed attempt
            return commit_failure(row, spec, wf, exc, owner, rendered=rendered)
    except Exception as exc:
        return _committing(partial(commit_failure, row, spec, wf, exc, owner, rendered=rendered))
    finally:
        heartbeat.release(row.pk)
    return _committing(partial(commit_success, row, spec, wf, output, owner, rendered=rendered))


def commit_patience() -> float:
    """How long a finished attempt keeps trying to commit while the database is away."""
    return max(lease_seconds(), 10.0)


def _committing(commit: Callable[[], StepExecution | None]) -> StepExecution | None:
    """Commit a finished attempt, again on a fresh connection while the database is away (a
    PostgreSQL restart while the handler ran): the result is in hand, so it is worth trying
    for a while (``commit_patience``) rather than running the step again. The fence makes
    that safe however long it takes: the commit lands only if the step is still this
    attempt's (nobody recovered it meanwhile), and a repeat of a commit that did land finds
    the step no longer ours and discards."""
    deadline = time.monotonic() + commit_patience()
    delay = 0.1
    while True:
        try:
            return commit()
        except (OperationalError, InterfaceError):
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("committing a step failed on a broken database connection; trying again in %gs", delay)
            for conn in connections.all(initialized_only=True):
                conn.close_if_unusable_or_obsolete()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _fence(row: StepExecution, owner: str) -> Any:
    return StepExecution.objects.filter(pk=row.pk, status=StepStatus.RUNNING, lease_owner=owner,
                                        attempt=row.attempt)


def commit_success(row: StepExecution, spec: StepSpec, wf: WorkflowSpec, output: Any, owner: str, *,
                   rendered: Any = None) -> StepExecution | None:
    now = clock.now()
    if row.item_index is not None:
        if mapitems.applies(row, spec):
            # A map item that is not the last: completed, the next item made and claimed, in one statement.
            got = mapitems.commit_item(row, spec, output, rendered, owner, now, lease_seconds(),
                                       _attempt_data(row, owner, now))
            if got is not mapitems.NOT_APPLIED:
                fault_point("after_commit")
                return got  # type: ignore[return-value]
        target = None
    else:
        target = hotpath.successor(row, spec, wf)
    if target is not None:
        # The sequential common case in one SQL statement; if its fence or run check did
        # not match, nothing was written and the general commit below decides.
        taken = hotpath.commit_and_claim(row, target, output, rendered, owner, now, lease_seconds(),
                                         _attempt_data(row, owner, now))
        if taken is not hotpath.NOT_APPLIED:
            fault_point("after_commit")
            return taken  # type: ignore[return-value]
    elif hotpath.finishes(row, spec, wf):
        # The last step of a plain top-level run: step and run completed in one statement.
        if hotpath.commit_and_finish(row, output, rendered, owner, now, _attempt_data(row, owner, now)):
            Effects(status_changes=[(row.run_id, RunStatus.COMPLETED)]).publish()
            fault_point("after_commit")
            return None
    with transaction.atomic():
        run = t.lock_run(row.run_id)
        updated = _fence(row, owner).update(
            status=StepStatus.COMPLETED, output=output, input=rendered, error=None, finished_at=now,
            lease_owner="", lease_until=None,
        )
        if updated != 1:
            logger.warning("step %s attempt %s lost its lease; result discarded", row.key, row.attempt)
            return None
        row.status, row.output, row.finished_at = StepStatus.COMPLETED, output, now
        fx = Effects(claim_owner=owner, lease_seconds=lease_seconds())
        fx.event(run.pk, "step_completed", row.key, data=_attempt_data(row, owner, now))
        t.release_step_slots({row.concurrency_key}, fx)
        t.advance(run, wf, row, spec, fx)
        fx.flush()
    fault_point("after_commit")
    claimed: StepExecution | None = fx.claimed
    if claimed is not None:
        if claimed.run_id == run.pk:
            claimed.run = run
        else:  # the first step of a child run started by this commit
            claimed.run = Run.objects.select_related("workflow").get(pk=claimed.run_id)
    return claimed


def _attempt_data(row: StepExecution, owner: str, now: Any) -> dict[str, Any]:
    started = row.started_at
    return {
        "attempt": row.attempt, "worker": owner,
        "started_at": started.isoformat() if started else None,
        "duration_ms": round((now - started).total_seconds() * 1000, 3) if started else None,
    }


def commit_park(row: StepExecution, park: step_types.Park, owner: str, *, rendered: Any = None) -> None:
    """A work step asked for a decision: fenced running -> waiting, holding no worker."""
    with transaction.atomic():
        run = t.lock_run(row.run_id)
        state = {**row.state, **park.state}
        if _fence(row, owner).update(status=StepStatus.WAITING, state=state, input=rendered, wake_at=None,
                                     lease_owner="", lease_until=None) != 1:
            logger.warning("step %s attempt %s lost its lease; park discarded", row.key, row.attempt)
            return
        row.status, row.state = StepStatus.WAITING, state
        if park.before_commit is not None:
            park.before_commit()
        fx = Effects()
        t.release_step_slots({row.concurrency_key}, fx)  # a parked step holds no slot
        fx.event(run.pk, "step_waiting", row.key, message=park.reason,
                 data={**park.data, "parked": True, "attempt": row.attempt, "worker": owner})
        t.refresh_run_status(run, fx)
        fx.flush()


def is_retryable(exc: BaseException, policy: RetryPolicy) -> bool:
    name = type(exc).__name__
    if name in policy.non_retryable:
        return False
    if isinstance(exc, PermanentError):
        return False
    if policy.retry_on:
        return name in policy.retry_on or (isinstance(exc, RetryableError) and "RetryableError" in policy.retry_on)
    return True


def error_from(exc: BaseException, row: StepExecution, *, kind: str | None = None,
               retryable: bool = False) -> dict[str, Any]:
    error: dict[str, Any] = {
        "type": kind or type(exc).__name__, "message": str(exc) or type(exc).__name__,
        "attempt": row.attempt, "retryable": retryable,
        "traceback": "".join(traceback.format_exception(exc))[-8000:],
    }
    details = getattr(exc, "details", None)
    if details is not None:
        try:
            json.dumps(details)
            error["details"] = details
        except (TypeError, ValueError):
            error["details"] = repr(details)
    return error


def commit_failure(row: StepExecution, spec: StepSpec | None, wf: WorkflowSpec, exc: BaseException, owner: str, *,
                   kind: str | None = None, rendered: Any = None) -> StepExecution | None:
    policy = spec.retry if spec is not None else RetryPolicy()
    failures = row.failures + 1
    retry = is_retryable(exc, policy) and failures < row.max_attempts and kind is None
    error = error_from(exc, row, kind=kind, retryable=retry)
    now = clock.now()
    with transaction.atomic():
        run = t.lock_run(row.run_id)
        fx = Effects()
        fence = _fence(row, owner)
        if retry:
            retry_after = getattr(exc, "retry_after", None)
            delay = float(retry_after) if retry_after is not None else policy.delay(failures, random.random())
            delay = min(delay, max(policy.max_backoff_seconds, 0.0)) if retry_after is None else delay
            not_before = now + timedelta(seconds=delay)
            # Short delays ride a countdown message; longer ones are only a row (no long ETAs).
            countdown = delay <= 60 and can_publish()
            updated = fence.update(
                status=StepStatus.READY, failures=failures, error=error, input=rendered, lease_owner="",
                lease_until=None, not_before=not_before, dispatched_at=not_before if countdown else None,
            )
            if updated == 1:
                fx.event(run.pk, "step_retry_scheduled", row.key, message=error["message"],
                         data={**_attempt_data(row, owner, now), "delay_seconds": round(delay, 3),
                               "error": {k: v for k, v in error.items() if k != "traceback"}})
                if countdown and run.status != RunStatus.PAUSED:
                    fx.countdowns.append((row.pk, delay))
                    if row.priority:
                        fx.priorities[row.pk] = row.priority
        else:
            updated = fence.update(
                status=StepStatus.FAILED, failures=failures, error=error, input=rendered, finished_at=now,
                lease_owner="", lease_until=None,
            )
            if updated == 1:
                fx.event(run.pk, "step_failed", row.key, message=error["message"],
                         data={**_attempt_data(row, owner, now), "error": error})
                t.release_step_slots({row.concurrency_key}, fx)
                if spec is not None:
                    t.step_failed(run, wf, row, spec, error, fx)
                else:
                    t.finish_run(run, wf, fx, RunStatus.FAILED, error={**error, "step": row.key})
        if updated != 1:
            logger.warning("step %s attempt %s lost its lease; failure discarded", row.key, row.attempt)
        fx.flush()
    return None


__all__ = ["StepTimeout", "claim", "process_step"]
