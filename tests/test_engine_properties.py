"""The engine under random workflows and random faults keeps its promises (issue 9).

A hypothesis rule-based state machine starts one run of a random workflow from the
definition grammar — sequences, condition branches, loops with ``max_visits``, maps,
parallel branches, child workflows, short timers, retry policies with handlers that fail
the first N attempts — and then, step by step, does one of:

- deliver a doorbell (``executor.process_step``), possibly twice, possibly with the
  attempt dying at a fault point: in the handler (between claim and commit), right after
  the commit (``after_commit``), before the commit's effects (``before_effects``) or
  while publishing (``before_publish``);
- lose a doorbell or a timer's wake-up (never deliver it);
- deliver a doorbell to a worker that stalls past its lease: another worker (or the
  reconciler) takes the step over, and the stalled one's result must be fenced out;
- let a worker's lease expire (a stalled worker), run the reconciler's sweep, let time pass;
- cancel, pause, resume or retry the run or one of its child runs (``runs.services``).

The engine runs in this process with no worker or engine subprocess beside it
(``fresh_engine``); published messages go to a list (``tests.property_handlers``) that
the machine delivers from, so "lost" and "duplicate" are exact.

After every rule: no step whose result was committed executes again (the handlers'
ledger), a completed step never changes, no step completes twice and no fan-out starts
or joins twice (history rows). At the end the machine resumes what it paused, delivers
everything, sweeps and lets time pass until nothing moves, and retries a run that
failed, then checks the reference model: a run it cancelled is cancelled; a loop past
its ``max_visits`` failed the run; any other run completed with exactly the output the
model predicts. Every run of the tree is finished and no step of it is left open.

Profiles: ``HYPOTHESIS_PROFILE=ci`` (the default; bounded for CI, derandomised) and
``long`` (``bench/README.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db.models import F
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from runs.engine import dispatch, effects, executor, recovery
from runs.models import RUN_TERMINAL, IllegalTransition, Run, RunEvent, RunStatus
from runs.services import cancel_run, load_workflow, pause_run, resume_run, retry_run, start_run
from steps.models import STEP_OPEN, StepExecution, StepStatus
from tests import property_handlers as ph

settings.register_profile(
    "ci", max_examples=int(os.environ.get("STEVORA_PROPERTY_EXAMPLES", "30")), stateful_step_count=30,
    deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    "long", max_examples=int(os.environ.get("STEVORA_PROPERTY_EXAMPLES", "400")), stateful_step_count=60,
    deadline=None, print_blob=True, phases=list(Phase),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

FAULTS = [None, None, "handler", "after_commit", "before_effects", "before_publish"]
CONTROLS = ["cancel", "pause", "resume", "retry"]
SETTLE_ROUNDS = 400
RETRIES = 30


# --- the definition grammar and the reference model ---------------------------------------------


class Case:
    """A generated workflow (with its child workflows) and what the model predicts of it."""

    def __init__(self) -> None:
        self.children: list[dict[str, Any]] = []
        self.document: dict[str, Any] = {}
        self.input: dict[str, Any] = {}
        self.output: dict[str, Any] = {}
        self.max_visits_fail = False  # a loop goes round more often than its max_visits allows

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return f"Case(document={json.dumps(self.document)}, children={json.dumps(self.children)}, " \
               f"input={self.input})"


def _named(document: dict[str, Any], prefix: str) -> dict[str, Any]:
    digest = hashlib.sha1(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]
    return {"name": f"{prefix}-{digest}", **document}


@st.composite
def cases(draw: st.DrawFn) -> Case:
    case = Case()
    values = iter(range(1, 10_000))

    def task(name: str, handler: str = "prop.work", **extra: Any) -> dict[str, Any]:
        fail = draw(st.integers(0, 2))
        attempts = draw(st.integers(1, 3))
        return {"name": name, "type": "task", "handler": handler, "config": {"v": next(values), "fail": fail},
                "retry": {"max_attempts": attempts, "backoff_seconds": 0, "jitter": False}, **extra}

    steps: list[dict[str, Any]] = []
    parts: dict[str, str] = {}
    blocks = draw(st.integers(1, 4))
    for i in range(blocks):
        b = f"b{i}"
        after = f"b{i + 1}" if i + 1 < blocks else "fin"
        kind = draw(st.sampled_from(["task", "branch", "loop", "map", "parallel", "child", "wait"]))
        if kind == "task":
            spec = task(b)
            steps.append(spec)
            parts[b], case.output[b] = f"{{{{ steps.{b}.output }}}}", {"v": spec["config"]["v"]}
        elif kind == "branch":
            flag = draw(st.booleans())
            case.input[f"f{i}"] = flag
            yes, no = task(f"{b}_yes", next=after), task(f"{b}_no")
            steps += [{"name": b, "type": "condition", "if": f"input.f{i}", "then": yes["name"], "else": no["name"]},
                      yes, no]
            taken = yes if flag else no
            parts[b], case.output[b] = f"{{{{ steps.{taken['name']}.output }}}}", {"v": taken["config"]["v"]}
        elif kind == "loop":
            laps, limit = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            body = task(b, handler="prop.visit", max_visits=limit)
            steps += [body, {"name": f"{b}_again", "type": "condition", "if": f"steps.{b}.output.visit < {laps}",
                             "then": b, "max_visits": 10}]
            parts[b], case.output[b] = f"{{{{ steps.{b}.output }}}}", {"visit": laps, "v": body["config"]["v"]}
            if laps > limit:
                case.max_visits_fail = True
        elif kind == "map":
            items = draw(st.lists(st.integers(0, 9), max_size=3))
            item = task("item", handler="prop.item")
            del item["name"]
            steps.append({"name": b, "type": "map", "over": items, "max_concurrency": draw(st.integers(1, 3)),
                          "step": item})
            parts[b], case.output[b] = f"{{{{ steps.{b}.output }}}}", [{"x": x, "i": n} for n, x in enumerate(items)]
        elif kind == "parallel":
            branches: dict[str, list[dict[str, Any]]] = {}
            for j in range(draw(st.integers(1, 3))):
                branches[f"x{j}"] = [task(f"{b}_x{j}_{k}") for k in range(draw(st.integers(1, 2)))]
            steps.append({"name": b, "type": "parallel", "branches": branches})
            parts[b] = f"{{{{ steps.{b}.output }}}}"
            case.output[b] = {name: {"v": seq[-1]["config"]["v"]} for name, seq in branches.items()}
        elif kind == "child":
            child = _named({"steps": [task(f"c{k}") for k in range(draw(st.integers(1, 2)))]}, "propchild")
            case.children.append(child)
            steps.append({"name": b, "type": "workflow", "workflow": child["name"]})
            parts[b], case.output[b] = f"{{{{ steps.{b}.output }}}}", {"v": child["steps"][-1]["config"]["v"]}
        else:
            steps.append({"name": b, "type": "wait", "seconds": draw(st.sampled_from([0, 2]))})
    steps.append({"name": "fin", "type": "task", "handler": "prop.collect", "config": {"parts": parts}})
    case.document = _named({"steps": steps}, "prop")
    return case


# --- the machine -------------------------------------------------------------------------------------


def tree_of(run_id: Any) -> list[Any]:
    """The run and every run below it (child runs, their child runs, ...)."""
    ids, frontier = [run_id], [run_id]
    while frontier:
        frontier = list(Run.objects.filter(parent_run_id__in=frontier).values_list("id", flat=True))
        ids += frontier
    return ids


def time_passes() -> None:
    """An hour goes by: timers fall due, backoffs end, leases and doorbells run out.

    ``ready_at`` stays put, so a step's doorbell looks overdue (``recovery.redispatch_ready``)."""
    hour = timedelta(hours=1)
    StepExecution.objects.filter(status__in=STEP_OPEN).update(
        dispatched_at=F("dispatched_at") - hour, not_before=F("not_before") - hour,
        wake_at=F("wake_at") - hour, lease_until=F("lease_until") - hour)


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        ph.reset()
        self.case: Case | None = None
        self.top: Any = None
        self.cancelled = False  # a cancel of the top-level run was accepted
        self.committed: dict[tuple[str, str], int] = {}  # (run, key) -> the attempt that committed

    # -- starting -------------------------------------------------------------------------------

    @initialize(case=cases())
    def start(self, case: Case) -> None:
        self.case = case
        for child in case.children:
            load_workflow(child)
        load_workflow(case.document)
        self.top = start_run(case.document["name"], case.input, actor="property-test").run.pk

    # -- messages ---------------------------------------------------------------------------------

    def _process(self, step_id: int, fault: str | None = None) -> None:
        if fault:
            ph.ARMED.add(fault)
        try:
            executor.process_step(step_id)
        except ph.AttemptDied as died:
            event(f"an attempt died at {died}")  # the process died: what it left behind stays behind
        finally:
            ph.ARMED.clear()
        self.check_committed_steps()

    @precondition(lambda self: bool(ph.BELLS))
    @rule(pick=st.integers(0, 50), fault=st.sampled_from(FAULTS), duplicate=st.booleans())
    def deliver(self, pick: int, fault: str | None, duplicate: bool) -> None:
        step_id = ph.BELLS.pop(pick % len(ph.BELLS))
        self._process(step_id, fault)
        if duplicate:
            self._process(step_id)  # the broker hands the same message out again

    @precondition(lambda self: bool(ph.BELLS))
    @rule(pick=st.integers(0, 50))
    def lose(self, pick: int) -> None:
        ph.BELLS.pop(pick % len(ph.BELLS))

    @precondition(lambda self: bool(ph.BELLS))
    @rule(pick=st.integers(0, 50), by_reconciler=st.booleans())
    def deliver_to_a_stalled_worker(self, pick: int, by_reconciler: bool) -> None:
        """The worker claims the step and stalls past its lease; the step is taken over
        (by the reconciler's sweep, or by another worker's claim of the expired lease); the
        stalled worker's handler finishes meanwhile and its commit must be refused."""
        step_id = ph.BELLS.pop(pick % len(ph.BELLS))
        stale = executor.claim(step_id)
        if stale is None:
            return
        StepExecution.objects.filter(pk=step_id, attempt=stale.attempt).update(
            lease_until=F("lease_until") - timedelta(hours=1))
        fresh = None
        if by_reconciler:
            recovery.sweep()
        else:
            fresh = executor.claim(step_id)
        try:
            executor.execute_and_commit(stale)
        except ph.AttemptDied:
            pass
        row = StepExecution.objects.get(pk=step_id)
        assert not (row.status == StepStatus.COMPLETED and row.attempt == stale.attempt), (
            f"step {row.key}: the commit of attempt {stale.attempt}, whose lease had expired and whose "
            f"step was taken over, was accepted")
        while fresh is not None:
            fresh = executor.execute_and_commit(fresh)
        self.check_committed_steps()

    @precondition(lambda self: bool(ph.WAKES))
    @rule(pick=st.integers(0, 50), lost=st.booleans())
    def timer(self, pick: int, lost: bool) -> None:
        step_id = ph.WAKES.pop(pick % len(ph.WAKES))
        if lost:
            return
        # The countdown message arrives when the timer is due.
        StepExecution.objects.filter(pk=step_id, status=StepStatus.WAITING, wake_at__isnull=False).update(
            wake_at=F("wake_at") - timedelta(hours=1))
        recovery.wake_step(step_id)

    # -- time and the reconciler ----------------------------------------------------------------------

    @rule()
    def leases_expire(self) -> None:
        """Every running step's worker stalled (in this process, no attempt runs between rules)."""
        StepExecution.objects.filter(status=StepStatus.RUNNING).update(
            lease_until=F("lease_until") - timedelta(hours=1))

    @rule()
    def sweep(self) -> None:
        recovery.sweep()

    @rule()
    def an_hour_passes(self) -> None:
        time_passes()

    # -- control actions ------------------------------------------------------------------------------

    @rule(action=st.sampled_from(CONTROLS), pick=st.integers(0, 10))
    def control(self, action: str, pick: int) -> None:
        runs = tree_of(self.top)
        target = runs[pick % len(runs)] if pick % 3 else self.top  # mostly the top-level run
        actions: dict[str, Callable[..., Run]] = {
            "cancel": cancel_run, "pause": pause_run, "resume": resume_run, "retry": retry_run}
        act = actions[action]
        try:
            act(target, actor="property-test")
        except IllegalTransition:
            return
        if action == "cancel" and target == self.top:
            self.cancelled = True

    # -- what must hold after every rule ----------------------------------------------------------------

    @invariant()
    def check_committed_steps(self) -> None:
        if self.top is None:
            return
        runs = tree_of(self.top)
        executions: dict[tuple[str, str], list[int]] = {}
        for run_id, key, attempt in ph.LEDGER:
            executions.setdefault((run_id, key), []).append(attempt)
        completed = {(str(run_id), key): attempt for run_id, key, attempt in StepExecution.objects.filter(
            run_id__in=runs, type="task", status=StepStatus.COMPLETED).values_list("run_id", "key", "attempt")}
        for (run_id, key), attempt in completed.items():
            first = self.committed.setdefault((run_id, key), attempt)
            assert first == attempt, f"step {key} of run {run_id} was committed at attempt {first}, later at {attempt}"
            ran = executions.get((run_id, key), [])
            assert attempt in ran, f"step {key} of run {run_id} committed attempt {attempt}, which never ran ({ran})"
            again = [a for a in ran if a > attempt]
            assert not again, f"step {key} of run {run_id} committed at attempt {attempt} executed again: {again}"
        reopened = set(self.committed) - set(completed)
        assert not reopened, f"completed steps are no longer completed: {sorted(reopened)}"
        self.check_history(runs)

    def check_history(self, runs: list[Any]) -> None:
        history = list(RunEvent.objects.filter(run_id__in=runs, kind__in=["step_completed", "fan_out", "branch_done"])
                       .values_list("run_id", "kind", "step_key", "data"))
        counts = Counter((run_id, kind, key, data.get("branch") if kind == "branch_done" else None)
                         for run_id, kind, key, data in history)
        twice = sorted((str(r), k, s, b, n) for (r, k, s, b), n in counts.items() if n > 1)
        assert not twice, f"recorded more than once (run, kind, step, branch, times): {twice}"

    # -- the end --------------------------------------------------------------------------------------

    def teardown(self) -> None:
        if self.top is None or self.case is None:
            return
        try:
            self.settle_and_check()
        finally:
            ph.reset()

    def settle_and_check(self) -> None:
        assert self.case is not None
        retries = 0
        for _ in range(SETTLE_ROUNDS):
            if ph.BELLS:
                self._process(ph.BELLS.pop(0))
                continue
            if ph.WAKES:
                recovery.wake_step(ph.WAKES.pop(0))
                continue
            top = Run.objects.get(pk=self.top)
            if not top.is_terminal:
                for run_id in Run.objects.filter(pk__in=tree_of(self.top), status=RunStatus.PAUSED).values_list(
                        "id", flat=True):
                    resume_run(run_id, actor="property-test")
            recovery.sweep()
            if ph.BELLS or ph.WAKES:
                continue
            time_passes()  # a reconciler interval, and then some
            recovery.sweep()
            if ph.BELLS or ph.WAKES:
                continue
            top = Run.objects.get(pk=self.top)
            if not top.is_terminal:
                open_steps = list(StepExecution.objects.filter(run_id__in=tree_of(self.top), status__in=STEP_OPEN)
                                  .values_list("run_id", "key", "status"))
                raise AssertionError(f"run {top.pk} is stuck: {top.status}, nothing to deliver after a sweep and "
                                     f"an hour; open steps {open_steps}")
            refused = (top.error or {}).get("type") == "max_visits_exceeded"  # retry_run refuses these
            if top.status == RunStatus.FAILED and not self.cancelled and not (self.case.max_visits_fail and refused):
                assert retries < RETRIES, f"run still fails after {retries} retries: {top.error}"
                retries += 1
                try:
                    retry_run(top.pk, actor="property-test")
                except IllegalTransition as exc:
                    raise AssertionError(f"a run that failed with {top.error} cannot be retried: {exc}") from None
                continue
            break
        else:
            raise AssertionError(f"run {self.top} did not settle in {SETTLE_ROUNDS} rounds")
        self.check_committed_steps()
        top = Run.objects.get(pk=self.top)
        event(f"ended {top.status}" + (f" after {retries} retries" if retries else ""))
        if self.cancelled:
            assert top.status == RunStatus.CANCELLED, f"cancelled run ended {top.status}"
        elif self.case.max_visits_fail:
            assert top.status == RunStatus.FAILED and (top.error or {}).get("type") == "max_visits_exceeded", (
                f"a loop past its max_visits: the run ended {top.status} with {top.error}")
        else:
            assert top.status == RunStatus.COMPLETED, f"run ended {top.status}: {top.error}"
            assert top.output == self.case.output, f"output {top.output} != model's {self.case.output}"
        runs = tree_of(self.top)
        unfinished = list(Run.objects.filter(pk__in=runs).exclude(status__in=RUN_TERMINAL).values_list("id", "status"))
        assert not unfinished, f"runs of the tree left unfinished: {unfinished}"
        left_open = list(StepExecution.objects.filter(run_id__in=runs, status__in=STEP_OPEN)
                         .values_list("run_id", "key", "status"))
        assert not left_open, f"steps left open after the run ended: {left_open}"
        self.check_joins(runs)

    def check_joins(self, runs: list[Any]) -> None:
        """Every completed fan-out of a completed run started once and joined once."""
        for run_id in Run.objects.filter(pk__in=runs, status=RunStatus.COMPLETED).values_list("id", flat=True):
            for key, kind, state in StepExecution.objects.filter(
                    run_id=run_id, type__in=["parallel", "map"], status=StepStatus.COMPLETED).values_list(
                    "key", "type", "state"):
                events = Counter(RunEvent.objects.filter(run_id=run_id, step_key=key).values_list("kind", flat=True))
                assert events["step_completed"] == 1, f"{key} of run {run_id}: {events}"
                if kind == "parallel":
                    assert events["fan_out"] == 1 and events["branch_done"] == len(state["branches"]), (
                        f"{key} of run {run_id}: {events}")
                elif state.get("total"):
                    assert events["fan_out"] == 1, f"{key} of run {run_id}: {events}"


# --- the test, in this process, with no engine beside it ----------------------------------------------


@pytest.fixture
def in_process_engine(fresh_engine: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The engine in this process: published messages and timers go to ``tests.property_handlers``'
    lists, and the named fault points raise ``AttemptDied`` instead of killing the process.

    ``fresh_engine`` stops the session's shared engine and starts none, so no other
    process claims, sweeps or wakes anything meanwhile."""
    monkeypatch.setattr(dispatch, "_engine_process", True)  # publish, as the engine process does
    for module in (effects, recovery, executor):
        monkeypatch.setattr(module, "dispatch_steps", ph.ring)
    monkeypatch.setattr(effects, "dispatch_wakes", ph.ring_wakes)
    for module in (effects, executor):
        monkeypatch.setattr(module, "fault_point", ph.fault)
    assert django_settings.STEVORA["MAX_RECOVERIES"] >= 1
    # Leases run out only when a rule says so: with the suite's 2 s lease a slow example on a
    # loaded machine saw leases expire by themselves, and the rules enabled on a replay of
    # the same example differed (hypothesis: FlakyStrategyDefinition).
    monkeypatch.setitem(django_settings.STEVORA, "LEASE_SECONDS", 1800.0)  # the rules move time by an hour
    yield
    ph.reset()


@pytest.mark.django_db(transaction=True)
def test_the_engine_keeps_its_promises_under_random_workflows_and_faults(in_process_engine: None) -> None:
    profile = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
    run_state_machine_as_test(EngineMachine, settings=profile)
