# mypy: disable-error-code="index,attr-defined"
"""A bulk decision resumes the common shape (an approval followed by a work step) set-based
(``runs.engine.resuming``) and every other shape one by one, writing the rows a single
decision writes: the same history, signals once per run, the same refusals, one winner
when a single decision races it. The tests start no engine, but one that an earlier test of
the same session started may take the successors: "started" is ready, running or completed."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection

from approvals import services as approval_services
from approvals.models import Approval, ApprovalStatus
from approvals.services import DecisionError, decide, decide_many
from runs.models import Run, RunEvent, RunStatus
from runs.services import cancel_run, load_workflow, pause_run, start_run
from runs.signals import run_status_changed
from steps.models import StepExecution, StepStatus
from tests.api_support import approval_first

pytestmark = pytest.mark.django_db(transaction=True)


def _park(n: int, name: str = "set-based", document: dict[str, Any] | None = None, **approval: Any) -> list[Approval]:
    load_workflow(document or approval_first(name, **approval))
    runs = [start_run(name, {"topic": f"t{i}"}).run.pk for i in range(n)]
    return list(Approval.objects.filter(run_id__in=runs).order_by("id"))


def _history(run_id: Any) -> list[tuple[str, str, str, Any]]:
    rows = RunEvent.objects.filter(run_id=run_id).order_by("id").values_list("kind", "step_key", "actor", "data")
    return [(kind, key, actor, {k: v for k, v in data.items() if k not in ("approval_id", "decided_at")})
            for kind, key, actor, data in rows]


STARTED = {StepStatus.READY, StepStatus.RUNNING, StepStatus.COMPLETED}


def _steps(run_id: Any) -> list[tuple[Any, ...]]:
    rows = StepExecution.objects.filter(run_id=run_id).order_by("id").values_list(
        "key", "name", "type", "status", "visit", "max_attempts", "priority", "branch", "wake_at")
    return [(*row[:3], "started" if row[3] in STARTED and row[0] != "review" else row[3], *row[4:])
            for row in rows]


def _output(run_id: Any) -> dict[str, Any]:
    output: dict[str, Any] = StepExecution.objects.get(run_id=run_id, key="review").output or {}
    return {k: v for k, v in output.items() if k != "decided_at"}


@pytest.fixture
def statuses() -> Any:
    seen: Counter[tuple[str, str]] = Counter()

    def receive(sender: Any, run_id: Any, status: str, **kwargs: Any) -> None:
        seen[(str(run_id), status)] += 1

    run_status_changed.connect(receive, dispatch_uid="test-set-based")
    yield seen
    run_status_changed.disconnect(dispatch_uid="test-set-based")


def test_the_set_based_resume_writes_what_a_single_decision_writes(alice: User, statuses: Any) -> None:
    approvals = _park(5)
    single, bulk = approvals[0], approvals[1:]
    statuses.clear()  # (the starts announced running and waiting)
    decide(single.pk, user=alice, approve=True, comment="fine")
    results = decide_many([a.pk for a in bulk], user=alice, approve=True, comment="fine")
    assert [r.outcome for r in results] == ["decided"] * 4
    reference = _history(single.run_id)
    reference = reference[:[kind for kind, *_ in reference].index("run_running") + 1]  # (an engine may go on)
    assert [kind for kind, *_ in reference][-5:] == ["approval_approved", "step_resumed", "step_completed",
                                                     "step_ready", "run_running"]
    for approval in bulk:
        assert _history(approval.run_id)[:len(reference)] == reference
        assert _steps(approval.run_id) == _steps(single.run_id)
        assert _output(approval.run_id) == {**_output(single.run_id), "content": approval.content}
        assert Run.objects.get(pk=approval.run_id).status in (RunStatus.RUNNING, RunStatus.COMPLETED)
        # The status signal (webhooks, waiters) once per run, after the commit.
        assert statuses[(str(approval.run_id), RunStatus.RUNNING)] == 1
    assert statuses[(str(single.run_id), RunStatus.RUNNING)] == 1
    after = StepExecution.objects.filter(run_id__in=[a.run_id for a in approvals], key="after")
    assert {row.status for row in after} <= STARTED and after.count() == 5


def test_a_chunk_costs_a_few_statements_whatever_its_size(alice: User, django_assert_max_num_queries: Any) -> None:
    approvals = _park(40)
    decide_many([approvals[0].pk], user=alice, approve=True)  # warm: the user's groups, the workflow's spec
    # One by one this was eight statements per run (320 here).
    with django_assert_max_num_queries(20):
        results = decide_many([a.pk for a in approvals[1:]], user=alice, approve=True)
    assert {r.outcome for r in results} == {"decided"}
    assert StepExecution.objects.filter(run_id__in=[a.run_id for a in approvals], key="after",
                                        status__in=STARTED).count() == 40


def test_refusals_in_a_mixed_batch_change_nothing_and_the_rest_is_decided(alice: User, bob: User) -> None:
    open_ones = _park(3)
    legal = _park(2, "set-based-legal", approvers={"groups": ["legal"]})
    decided_before = _park(1, "set-based-done")
    decide(decided_before[0].pk, user=alice, approve=False)
    ids = [open_ones[0].pk, legal[0].pk, open_ones[1].pk, decided_before[0].pk, 987_654, legal[1].pk,
           open_ones[2].pk]
    legal_history = {a.run_id: _history(a.run_id) for a in legal}
    results = decide_many(ids, user=alice, approve=True)
    assert [r.outcome for r in results] == ["decided", "refused", "decided", "refused", "refused", "refused",
                                            "decided"]
    assert "not among the approvers" in results[1].reason
    assert "already rejected by alice" in results[3].reason
    assert "no approval with id 987654" in results[4].reason
    for approval in legal:
        assert Approval.objects.get(pk=approval.pk).status == ApprovalStatus.PENDING
        assert Run.objects.get(pk=approval.run_id).status == RunStatus.WAITING
        assert _history(approval.run_id) == legal_history[approval.run_id]
    for approval in open_ones:
        assert Run.objects.get(pk=approval.run_id).status in (RunStatus.RUNNING, RunStatus.COMPLETED)
    # Without the permission: every id refused, nothing written.
    assert {r.outcome for r in decide_many([a.pk for a in legal], user=bob, approve=True)} == {"refused"}
    for approval in legal:
        assert _history(approval.run_id) == legal_history[approval.run_id]


def test_other_shapes_in_the_same_batch_are_resumed_one_by_one_with_the_same_rows(alice: User) -> None:
    plain = _park(2)
    # An approval followed by a condition (inline), one at the end of its run, one in a paused
    # run, one whose next step has a concurrency limit: each resumed as a single decision would.
    conditional = _park(2, "set-based-cond", {"name": "set-based-cond", "steps": [
        {"name": "review", "type": "approval", "content": "{{ input.topic }}"},
        {"name": "check", "type": "condition", "if": "steps.review.output.approved", "then": "after",
         "else": "after"},
        {"name": "after", "type": "task", "handler": "test.value", "config": {"value": 1}}]})
    last = _park(1, "set-based-last", {"name": "set-based-last", "steps": [
        {"name": "review", "type": "approval", "content": "{{ input.topic }}"}]})
    limited = _park(2, "set-based-limited", {"name": "set-based-limited", "steps": [
        {"name": "review", "type": "approval", "content": "{{ input.topic }}"},
        {"name": "after", "type": "task", "handler": "test.value", "config": {"value": 1},
         "concurrency": {"key": "one", "limit": 1}}]})
    paused = _park(1, "set-based-paused")
    pause_run(paused[0].run_id, actor="alice")
    everything = plain + conditional + last + limited + paused
    results = decide_many([a.pk for a in everything], user=alice, approve=True)
    assert {r.outcome for r in results} == {"decided"}, [r.reason for r in results]
    for approval in conditional:
        assert StepExecution.objects.get(run_id=approval.run_id, key="check").status == StepStatus.COMPLETED
        assert StepExecution.objects.get(run_id=approval.run_id, key="after").status in STARTED
    assert Run.objects.get(pk=last[0].run_id).status == RunStatus.COMPLETED
    # Flow control still admits: one slot, so one successor admitted at once and the other queued.
    queued = RunEvent.objects.filter(run_id__in=[a.run_id for a in limited], kind="step_queued", step_key="after")
    assert queued.count() == 1
    assert StepExecution.objects.filter(run_id__in=[a.run_id for a in limited], key="after").count() == 2
    assert Run.objects.get(pk=paused[0].run_id).status == RunStatus.PAUSED
    assert StepExecution.objects.get(run_id=paused[0].run_id, key="after").status == StepStatus.READY
    for approval in plain:
        assert StepExecution.objects.get(run_id=approval.run_id, key="after").status in STARTED


def test_a_run_cancelled_between_the_read_and_the_decision_is_refused_and_the_rest_decided(
        alice: User, monkeypatch: Any) -> None:
    approvals = _park(4)
    victim = approvals[2]
    original = approval_services._decide_chunk

    def cancel_first(chunk: list[Approval], **kwargs: Any) -> Any:
        # Another process cancels the run after decide_many read the approvals and checked them.
        other = threading.Thread(target=_in_own_connection(cancel_run, victim.run_id, actor="carol"))
        other.start()
        other.join()
        return original(chunk, **kwargs)

    monkeypatch.setattr(approval_services, "_decide_chunk", cancel_first)
    results = decide_many([a.pk for a in approvals], user=alice, approve=True)
    assert [r.outcome for r in results] == ["decided", "decided", "refused", "decided"]
    assert "cancelled with its run" in results[2].reason
    assert Run.objects.get(pk=victim.run_id).status == RunStatus.CANCELLED
    assert Approval.objects.get(pk=victim.pk).status == ApprovalStatus.CANCELLED
    assert not RunEvent.objects.filter(run_id=victim.run_id, kind__in=("approval_approved", "step_resumed")).exists()
    assert not StepExecution.objects.filter(run_id=victim.run_id, key="after").exists()


def _in_own_connection(fn: Any, *args: Any, **kwargs: Any) -> Any:
    def call() -> None:
        try:
            call.result = fn(*args, **kwargs)
        except Exception as exc:  # handed back to the test
            call.result = exc
        finally:
            connection.close()

    return call


@pytest.mark.parametrize("rounds", [4])
def test_a_single_decision_racing_the_bulk_one_exactly_one_wins(alice: User, rounds: int) -> None:
    Group.objects.get_or_create(name="reviewers")
    for round_ in range(rounds):
        approvals = _park(6, f"set-based-race-{round_}")
        contested = approvals[round_ % 6]
        gate = threading.Barrier(2)
        ids = [a.pk for a in approvals]

        def bulk_call(gate: threading.Barrier = gate, ids: list[int] = ids) -> Any:
            gate.wait()
            return decide_many(ids, user=alice, approve=True)

        def single_call(gate: threading.Barrier = gate, contested: Approval = contested) -> Any:
            gate.wait()
            return decide(contested.pk, user=alice, approve=False)

        bulk, single = _in_own_connection(bulk_call), _in_own_connection(single_call)
        threads = [threading.Thread(target=bulk), threading.Thread(target=single)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        bulk_results = bulk.result
        assert not isinstance(bulk_results, Exception), bulk_results
        by_id = {r.id: r for r in bulk_results}
        single_won = not isinstance(single.result, Exception)
        if not single_won:
            assert isinstance(single.result, DecisionError)
        assert (by_id[contested.pk].outcome == "decided") != single_won
        row = Approval.objects.get(pk=contested.pk)
        assert row.status == (ApprovalStatus.REJECTED if single_won else ApprovalStatus.APPROVED)
        kinds = Counter(RunEvent.objects.filter(run_id=contested.run_id).values_list("kind", flat=True))
        assert kinds["approval_approved"] + kinds["approval_rejected"] == 1
        assert kinds["run_running"] == 1
        assert RunEvent.objects.filter(run_id=contested.run_id, kind="step_completed", step_key="review").count() == 1
        assert StepExecution.objects.filter(run_id=contested.run_id, key="after").count() == 1
        for approval in approvals:
            if approval.pk != contested.pk:
                assert by_id[approval.pk].outcome == "decided"


def _parked_rows(run_id: Any) -> Any:
    approval = Approval.objects.get(run_id=run_id)
    run = Run.objects.get(pk=run_id)
    return (run.status, run.started_at is not None, [(*row[:-1], row[-1] is not None) for row in _steps(run_id)],
            [(kind, key, actor, {k: v for k, v in data.items() if k not in ("expires_at", "wake_at")})
             for kind, key, actor, data in _history(run_id)],
            (approval.status, approval.step_key, approval.allowed_groups, approval.allowed_users, approval.allow_edit,
             approval.expires_at is not None, approval.webhook_url,
             StepExecution.objects.get(pk=approval.step_id).state == {"approval_id": approval.pk}))


@pytest.mark.parametrize("timeout", [{"timeout_seconds": 3600}, {}])
def test_a_batch_parking_on_an_approval_writes_what_single_starts_write(statuses: Any,
                                                                        timeout: dict[str, Any]) -> None:
    from django.test.utils import CaptureQueriesContext

    from runs.services import BatchItem, start_runs

    load_workflow(approval_first("park-batch", approvers={"groups": ["reviewers"]}, **timeout))
    single = start_run("park-batch", {"topic": "t0"}).run.pk
    start_runs("park-batch", [BatchItem({"topic": "warm"})])
    statuses.clear()
    with CaptureQueriesContext(connection) as queries:
        results = start_runs("park-batch", [BatchItem({"topic": f"t{i}"}) for i in range(1, 31)], actor="")
    # One by one this was ten statements per run; the signal receivers after the commit (the
    # webhooks app asks whether anyone subscribes) are not the engine's.
    engine_statements = [q["sql"] for q in queries.captured_queries if "webhooks_" not in q["sql"]]
    assert len(engine_statements) <= 12, engine_statements
    reference = _parked_rows(single)
    assert reference[0] == RunStatus.WAITING
    for result in results:
        assert _parked_rows(result.run.pk) == reference
        assert Approval.objects.get(run_id=result.run.pk).content == {"text": f"t{results.index(result) + 1}"}
        assert statuses[(str(result.run.pk), RunStatus.RUNNING)] == 1
        assert statuses[(str(result.run.pk), RunStatus.WAITING)] == 1


def test_a_batch_item_whose_approvers_do_not_render_fails_alone(alice: User) -> None:
    from runs.services import BatchItem, start_runs

    load_workflow(approval_first("park-bad", approvers={"users": ["{{ input.who }}"]}))
    results = start_runs("park-bad", [BatchItem({"topic": "a", "who": "alice"}), BatchItem({"topic": "b", "who": 7}),
                                      BatchItem({"topic": "c", "who": "alice"})])
    assert [Run.objects.get(pk=r.run.pk).status for r in results] == [RunStatus.WAITING, RunStatus.FAILED,
                                                                       RunStatus.WAITING]
    assert "approvers.users" in (Run.objects.get(pk=results[1].run.pk).error or {}).get("message", "")
    # The parked ones are decided like any other, set-based.
    ids = [a.pk for a in Approval.objects.filter(run_id__in=[results[0].run.pk, results[2].run.pk])]
    assert {r.outcome for r in decide_many(ids, user=alice, approve=True)} == {"decided"}
