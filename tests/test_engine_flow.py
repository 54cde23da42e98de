"""Control flow on a real engine (Celery workers on PostgreSQL + Redis, or runengine embedded):
sequences, branches, loops, fan-out, child runs, waits, retries, failures, control actions
and the commands operators script against (docs/definitions.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from runs.models import IllegalTransition, Run, RunEvent
from runs.services import StartError, cancel_run, pause_run, resume_run, retry_run, start_run
from steps.models import StepExecution
from tests.conftest import read_ledger, wait_for_run
from tests.support.workers import ROOT, subprocess_env, wait_until

FAST_RETRY = {"max_attempts": 3, "backoff_seconds": 0.1, "backoff_multiplier": 2, "jitter": False}


def task(name: str, handler: str = "noop", **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "task", "handler": handler, **fields}


def run_to_end(name: str, run_input: dict[str, Any] | None = None, timeout: float = 30, **kwargs: Any) -> Run:
    run = start_run(name, run_input or {}, **kwargs).run
    return wait_for_run(run.pk, timeout=timeout)


def steps_of(run: Run) -> dict[str, StepExecution]:
    return {row.key: row for row in StepExecution.objects.filter(run=run).order_by("id")}


def events(run: Run, kind: str) -> list[RunEvent]:
    return list(RunEvent.objects.filter(run=run, kind=kind).order_by("id"))


def error_of(run: Run) -> dict[str, Any]:
    assert run.error is not None, f"run {run.pk} has no error ({run.status})"
    return run.error


def wait_for_step(run: Run, key: str, status: str, timeout: float = 20) -> StepExecution:
    return wait_until(lambda: StepExecution.objects.filter(run=run, key=key, status=status).first(),
                      timeout=timeout, message=f"step {key} to be {status}")


# --- sequences and branches ---------------------------------------------------------------------


def test_a_sequence_hands_each_output_to_the_next_step(engine: Any, workflow: Any) -> None:
    workflow({"name": "chain", "steps": [
        task("one", "echo", config={"n": "{{ input.n }}"}),
        task("two", "echo", config={"n": "{{ steps.one.output.n * 10 }}", "all": "{{ [input.n, run.workflow] }}"}),
        task("three", "echo", config={"sum": "{{ steps.one.output.n + steps.two.output.n }}"}),
    ]})
    run = run_to_end("chain", {"n": 4})
    assert run.status == "completed", run.error
    assert run.output == {"sum": 44}
    rows = steps_of(run)
    assert list(rows) == ["one", "two", "three"]
    assert rows["two"].input == {"n": 40, "all": [4, "chain"]}
    assert all(row.attempt == 1 and row.status == "completed" for row in rows.values())


def test_a_condition_takes_then_or_else(engine: Any, workflow: Any) -> None:
    workflow({"name": "branchy", "steps": [
        task("fetch", "echo", config={"status": "{{ input.status }}"}),
        {"name": "check", "type": "condition", "if": "steps.fetch.output.status == 200",
         "then": "ok", "else": "give-up"},
        task("ok", "echo", config={"path": "ok"}, next="end"),
        task("give-up", "echo", config={"path": "gave up"}),
    ]})
    good = run_to_end("branchy", {"status": 200})
    bad = run_to_end("branchy", {"status": 500})
    assert (good.status, good.output) == ("completed", {"path": "ok"})
    assert (bad.status, bad.output) == ("completed", {"path": "gave up"})
    assert list(steps_of(good)) == ["fetch", "check", "ok"]
    assert list(steps_of(bad)) == ["fetch", "check", "give-up"]
    assert steps_of(good)["check"].output == {"result": True, "next": "ok"}


def test_a_loop_through_then_sees_the_previous_visit_and_ends(engine: Any, workflow: Any) -> None:
    workflow({"name": "counter", "steps": [
        task("inc", "test.value", config={"value": "{{ steps.inc.output + 1 if steps.inc is defined else 1 }}"}),
        {"name": "again", "type": "condition", "if": "steps.inc.output < input.until", "then": "inc", "else": "end"},
    ]})
    run = run_to_end("counter", {"until": 3})
    assert run.status == "completed", run.error
    rows = steps_of(run)
    assert list(rows) == ["inc", "again", "inc#2", "again#2", "inc#3", "again#3"]
    assert [rows[k].output for k in ("inc", "inc#2", "inc#3")] == [1, 2, 3]
    assert run.output == 3  # a condition is never the output; the step before it is


def test_max_visits_stops_a_runaway_loop_with_a_clear_error(engine: Any, workflow: Any) -> None:
    workflow({"name": "runaway", "steps": [task("spin", next="spin", max_visits=3)]})
    run = run_to_end("runaway")
    assert run.status == "failed"
    assert error_of(run)["type"] == "max_visits_exceeded"
    assert "'spin'" in error_of(run)["message"] and "max_visits is 3" in error_of(run)["message"]
    assert list(steps_of(run)) == ["spin", "spin#2", "spin#3"]
    with pytest.raises(IllegalTransition):
        retry_run(run.pk)  # looping again cannot help; the refusal says so instead of crashing


def test_the_workflow_wide_max_visits_applies_to_every_step(engine: Any, workflow: Any) -> None:
    workflow({"name": "runaway2", "max_visits": 2, "steps": [
        task("a"), {"name": "back", "type": "condition", "if": True, "then": "a"}]})
    run = run_to_end("runaway2")
    assert run.status == "failed" and error_of(run)["type"] == "max_visits_exceeded"
    assert list(steps_of(run)) == ["a", "back", "a#2", "back#2"]


# --- fan-out and fan-in -------------------------------------------------------------------------


def test_map_respects_max_concurrency_and_joins_outputs_in_item_order(engine: Any, workflow: Any,
                                                                      ledger: Path) -> None:
    workflow({"name": "mapper", "steps": [
        {"name": "gather", "type": "map", "over": "{{ input.sleeps }}", "max_concurrency": 2,
         "step": {"type": "task", "handler": "test.ledger", "config": {
             "sleep": "{{ item }}", "value": "{{ index * 10 }}",
             "started": str(ledger), "ledger": str(ledger)}}},
        task("after", "echo", config={"values": "{{ steps.gather.output | map(attribute='value') | list }}"}),
    ]})
    run = run_to_end("mapper", {"sleeps": [0.3, 0.05, 0.2, 0, 0.1]})
    assert run.status == "completed", run.error
    assert run.output == {"values": [0, 10, 20, 30, 40]}
    assert [o["step"] for o in steps_of(run)["gather"].output or []] == [f"gather[{i}]" for i in range(5)]
    # Each item writes a line when it starts and when it ends: never more than 2 in flight.
    in_flight: set[str] = set()
    most = 0
    for line in read_ledger(ledger):
        key = line.split()[1]
        if key in in_flight:
            in_flight.remove(key)
        else:
            in_flight.add(key)
            most = max(most, len(in_flight))
    assert 1 <= most <= 2


def test_map_over_a_literal_list_renders_its_templates(engine: Any, workflow: Any) -> None:
    workflow({"name": "literal-map", "steps": [
        {"name": "each", "type": "map", "over": ["{{ input.a }}", "b", "{{ input.n + 1 }}"],
         "step": {"type": "task", "handler": "test.value"}}]})
    run = run_to_end("literal-map", {"a": "A", "n": 1})
    assert (run.status, run.output) == ("completed", ["A", "b", 2])


def test_map_over_an_empty_list_outputs_an_empty_list(engine: Any, workflow: Any) -> None:
    workflow({"name": "empty-map", "steps": [
        {"name": "gather", "type": "map", "over": "{{ input.xs }}", "step": {"type": "task", "handler": "echo"}}]})
    run = run_to_end("empty-map", {"xs": []})
    assert (run.status, run.output) == ("completed", [])


def test_map_over_something_that_is_not_a_list_fails_clearly(engine: Any, workflow: Any) -> None:
    workflow({"name": "bad-map", "steps": [
        {"name": "gather", "type": "map", "over": "{{ input.xs }}", "step": {"type": "task", "handler": "echo"}}]})
    run = run_to_end("bad-map", {"xs": "abc"})
    assert run.status == "failed"
    assert "'over' must evaluate to a list, got str" in error_of(run)["message"]


def test_a_failed_map_item_fails_the_run_and_retry_reruns_only_that_item(engine: Any, workflow: Any) -> None:
    workflow({"name": "map-retry", "steps": [
        {"name": "gather", "type": "map", "over": "{{ input.xs }}", "max_concurrency": 1,
         "step": {"type": "task", "handler": "test.fail_times",
                  "config": {"times": "{{ 1 if item == 'bad' else 0 }}"}}}]})
    run = run_to_end("map-retry", {"xs": ["ok", "bad", "ok", "ok"]})
    assert run.status == "failed"
    assert error_of(run)["step"] == "gather[1]"
    assert "gather[1] failed" in error_of(run)["message"]
    rows = steps_of(run)
    # Items are made as max_concurrency admits them: those after the failed one were never made.
    assert [rows[f"gather[{i}]"].status for i in range(2)] == ["completed", "failed"]
    assert "gather[2]" not in rows and "gather[3]" not in rows

    retry_run(run.pk, actor="test")
    run = wait_for_run(run.pk)
    assert run.status == "completed", run.error
    rows = steps_of(run)
    assert [rows[f"gather[{i}]"].attempt for i in range(4)] == [1, 2, 1, 1]
    assert run.output == [{"attempt": 1}, {"attempt": 2}, {"attempt": 1}, {"attempt": 1}]


def test_parallel_branches_join_into_one_output_by_branch_name(engine: Any, workflow: Any) -> None:
    workflow({"name": "fan", "steps": [
        {"name": "both", "type": "parallel", "branches": {
            "a": [task("a1", "echo", config={"v": 1}),
                  task("a2", "test.value", config={"value": "{{ steps.a1.output.v + 1 }}"})],
            "b": [task("b1", "test.value", config={"value": "b"})],
            "c": [{"name": "c1", "type": "wait", "seconds": 0.2}, task("c2", "test.value", config={"value": None})],
        }},
        task("after", "echo", config={"joined": "{{ steps.both.output }}"}),
    ]})
    run = run_to_end("fan")
    assert run.status == "completed", run.error
    assert run.output == {"joined": {"a": 2, "b": "b", "c": None}}
    assert steps_of(run)["both"].output == {"a": 2, "b": "b", "c": None}


def test_a_failing_branch_cancels_its_siblings_and_fails_the_run(engine: Any, workflow: Any) -> None:
    workflow({"name": "fan-fail", "steps": [
        {"name": "both", "type": "parallel", "branches": {
            "slow": [{"name": "nap", "type": "wait", "seconds": 30}],
            "bad": [task("boom", "test.permanent", config={"message": "no way"})],
        }},
        task("after")]})
    run = run_to_end("fan-fail")
    assert run.status == "failed"
    assert error_of(run)["step"] == "boom" and "no way" in error_of(run)["message"]
    rows = steps_of(run)
    assert (rows["nap"].status, rows["boom"].status, rows["both"].status) == ("cancelled", "failed", "failed")
    assert "after" not in rows


# --- child runs ----------------------------------------------------------------------------------


def test_a_child_workflow_runs_and_its_output_is_the_steps_output(engine: Any, workflow: Any) -> None:
    workflow({"name": "child", "input_schema": {"type": "object", "required": ["x"]},
              "output": "{{ {'doubled': steps.double.output} }}",
              "steps": [task("double", "test.value", config={"value": "{{ input.x * 2 }}"})]})
    workflow({"name": "parent", "steps": [
        task("prep", "echo", config={"v": "{{ input.v }}"}),
        {"name": "sub", "type": "workflow", "workflow": "child", "input": {"x": "{{ steps.prep.output.v }}"}},
        task("after", "echo", config={"got": "{{ steps.sub.output.doubled }}"}),
    ]})
    run = run_to_end("parent", {"v": 21})
    assert run.status == "completed", run.error
    assert run.output == {"got": 42}
    child = Run.objects.get(parent_run=run)
    assert (child.workflow_name, child.status, child.output) == ("child", "completed", {"doubled": 42})
    assert steps_of(run)["sub"].state["child_run"] == str(child.pk)


def test_a_failing_child_fails_the_parent_with_the_childs_error(engine: Any, workflow: Any) -> None:
    workflow({"name": "bad-child", "steps": [task("explode", "test.permanent", config={"message": "kaput"})]})
    workflow({"name": "parent2", "steps": [
        {"name": "sub", "type": "workflow", "workflow": "bad-child"}, task("after")]})
    run = run_to_end("parent2")
    assert run.status == "failed"
    child = Run.objects.get(parent_run=run)
    assert child.status == "failed"
    assert error_of(run)["type"] == "child_failed"
    assert str(child.pk) in error_of(run)["message"] and "kaput" in error_of(run)["message"]
    assert "after" not in steps_of(run)


def test_a_child_that_cannot_start_fails_the_step_with_the_input_errors(engine: Any, workflow: Any) -> None:
    workflow({"name": "strict-child", "input_schema": {"type": "object", "required": ["x"]},
              "steps": [task("a")]})
    workflow({"name": "parent3", "steps": [{"name": "sub", "type": "workflow", "workflow": "strict-child"}]})
    run = run_to_end("parent3")
    assert run.status == "failed"
    assert error_of(run)["type"] == "child_start_failed"
    assert "'x' is a required property" in error_of(run)["message"]


def test_retry_run_after_loading_a_missing_child_workflow_starts_the_child(engine: Any, workflow: Any) -> None:
    workflow({"name": "needs-helper", "steps": [
        {"name": "sub", "type": "workflow", "workflow": "helper", "input": {"v": "{{ input.v }}"}},
        {"name": "more", "type": "map", "over": "{{ input.xs }}", "step": {"type": "task", "handler": "test.value"}}]})
    run = run_to_end("needs-helper", {"v": 1, "xs": "not a list"})
    assert run.status == "failed" and error_of(run)["type"] == "child_start_failed"
    assert "no workflow named 'helper'" in error_of(run)["message"]
    workflow({"name": "helper", "steps": [task("h", "echo", config={"v": "{{ input.v }}"})]})
    retry_run(run.pk)
    run = wait_for_run(run.pk)
    # The child starts now; the map then fails on its own bad input, and is retried afresh too.
    assert run.status == "failed" and error_of(run)["step"] == "more", run.error
    assert steps_of(run)["sub"].output == {"v": 1}
    assert "'over' must evaluate to a list" in error_of(run)["message"]
    retry_run(run.pk)
    run = wait_for_run(run.pk)
    assert run.status == "failed" and error_of(run)["step"] == "more"
    assert Run.objects.filter(parent_run=run).count() == 1


def test_a_child_that_finishes_at_once_completes_the_parent_step(engine: Any, workflow: Any) -> None:
    workflow({"name": "instant-child", "steps": [{"name": "yes", "type": "condition", "if": True, "then": "end"}]})
    workflow({"name": "instant-fail", "steps": [{"name": "no", "type": "condition", "if": "input.missing"}]})
    workflow({"name": "parent4", "steps": [{"name": "sub", "type": "workflow", "workflow": "instant-child"},
                                           task("after", "echo", config={"v": 1})]})
    workflow({"name": "parent5", "steps": [{"name": "sub", "type": "workflow", "workflow": "instant-fail"}]})
    ok = run_to_end("parent4", timeout=15)
    assert (ok.status, ok.output) == ("completed", {"v": 1})
    bad = run_to_end("parent5", timeout=15)
    assert bad.status == "failed" and "has no attribute 'missing'" in error_of(bad)["message"]


def test_map_can_start_a_child_run_per_item(engine: Any, workflow: Any) -> None:
    workflow({"name": "square", "steps": [task("sq", "test.value", config={"value": "{{ input.x * input.x }}"})]})
    workflow({"name": "squares", "steps": [
        {"name": "each", "type": "map", "over": "{{ input.xs }}", "max_concurrency": 2,
         "step": {"type": "workflow", "workflow": "square", "input": {"x": "{{ item }}"}}}]})
    run = run_to_end("squares", {"xs": [1, 2, 3]})
    assert (run.status, run.output) == ("completed", [1, 4, 9])
    assert Run.objects.filter(parent_run=run, status="completed").count() == 3


def test_retry_run_retries_a_failed_child_run_from_its_failed_step(engine: Any, workflow: Any,
                                                                   ledger: Path) -> None:
    workflow({"name": "shaky-child", "steps": [
        task("c0", "test.ledger", config={"ledger": str(ledger)}),
        task("c1", "test.fail_times", config={"times": 1})]})
    workflow({"name": "steady-parent", "steps": [
        task("p0", "test.ledger", config={"ledger": str(ledger)}),
        {"name": "sub", "type": "workflow", "workflow": "shaky-child"},
        task("p1", "test.ledger", config={"ledger": str(ledger)})]})
    run = run_to_end("steady-parent")
    assert run.status == "failed" and error_of(run)["step"] == "sub"
    retry_run(run.pk)
    run = wait_for_run(run.pk)
    assert run.status == "completed", run.error
    child = Run.objects.get(parent_run=run)
    assert child.status == "completed" and steps_of(child)["c1"].attempt == 2
    assert [line.split()[1] for line in read_ledger(ledger)] == ["p0", "c0", "p1"]


def test_parallel_branches_may_nest_and_loop_inside_their_branch(engine: Any, workflow: Any) -> None:
    workflow({"name": "nested", "steps": [{"name": "outer", "type": "parallel", "branches": {
        "left": [{"name": "inner", "type": "parallel", "branches": {
            "x": [task("x1", "test.value", config={"value": "x"})],
            "y": [task("y1", "test.value", config={"value": "y"})]}}],
        "right": [
            task("r1", "test.value", config={"value": "{{ steps.r1.output + 1 if steps.r1 is defined else 0 }}"}),
            {"name": "r-again", "type": "condition", "if": "steps.r1.output < 2", "then": "r1"}],
    }}]})
    run = run_to_end("nested")
    assert run.status == "completed", run.error
    assert run.output == {"left": {"x": "x", "y": "y"}, "right": 2}


@pytest.mark.parametrize("retry, attempts", [
    ({"retry_on": ["ValueError"]}, 2),
    ({"retry_on": ["RetryableError"]}, 1),
    ({"non_retryable": ["ValueError"]}, 1),
])
def test_retry_on_and_non_retryable_choose_which_errors_are_retried(engine: Any, workflow: Any,
                                                                    retry: dict[str, Any], attempts: int) -> None:
    name = "choosy-" + "-".join(f"{k}-{v[0]}" for k, v in retry.items()).lower()
    workflow({"name": name, "steps": [task("bug", "test.crash", retry={"max_attempts": 2, "backoff_seconds": 0.1,
                                                                       **retry})]})
    run = run_to_end(name)
    assert run.status == "failed" and error_of(run)["type"] == "ValueError"
    assert steps_of(run)["bug"].attempt == attempts


def test_a_workflow_that_starts_itself_stops_at_the_nesting_limit(engine: Any, workflow: Any) -> None:
    from runs.engine.fanout import MAX_CHILD_DEPTH

    workflow({"name": "ouroboros", "steps": [{"name": "again", "type": "workflow", "workflow": "ouroboros"}]})
    workflow({"name": "slow-ouroboros", "steps": [
        task("first"), {"name": "again", "type": "workflow", "workflow": "slow-ouroboros"}]})
    for name in ("ouroboros", "slow-ouroboros"):
        run = run_to_end(name)
        assert run.status == "failed"
        assert error_of(run)["type"] == "child_failed"
        assert Run.objects.filter(workflow_name=name).count() == MAX_CHILD_DEPTH + 1
        deepest = Run.objects.filter(workflow_name=name).order_by("-created_at").first()
        assert deepest is not None
        assert f"nest deeper than {MAX_CHILD_DEPTH} levels" in error_of(deepest)["message"]


# --- waits -------------------------------------------------------------------------------------


def test_a_wait_for_seconds_parks_the_run_then_goes_on(engine: Any, workflow: Any) -> None:
    workflow({"name": "napper", "steps": [{"name": "nap", "type": "wait", "seconds": 0.5}, task("after")]})
    run = start_run("napper", {}).run
    wait_until(lambda: Run.objects.get(pk=run.pk).status == "waiting", timeout=10, message="run to wait")
    assert StepExecution.objects.get(run=run, key="nap").wake_at is not None
    run = wait_for_run(run.pk)
    assert run.status == "completed"
    assert list(steps_of(run)) == ["nap", "after"]
    assert [e.kind for e in RunEvent.objects.filter(run=run, kind__in=["run_waiting", "run_running"])] == [
        "run_waiting", "run_running"]


def test_a_wait_until_a_timestamp_from_the_input(engine: Any, workflow: Any) -> None:
    workflow({"name": "alarm", "steps": [{"name": "until", "type": "wait", "until": "{{ input.when }}"},
                                         task("after")]})
    when = timezone.now() + timedelta(seconds=0.7)
    run = run_to_end("alarm", {"when": when.isoformat()})
    assert run.status == "completed"
    assert steps_of(run)["until"].output == {"waited_until": when.isoformat()}
    past = run_to_end("alarm", {"when": "2001-01-01T00:00:00+00:00"})
    assert past.status == "completed"
    nonsense = run_to_end("alarm", {"when": "next tuesday"})
    assert nonsense.status == "failed" and "not an ISO timestamp" in error_of(nonsense)["message"]


# --- retries and failures -------------------------------------------------------------------------


def test_a_transient_failure_retries_with_backoff_then_succeeds(engine: Any, workflow: Any) -> None:
    workflow({"name": "flaky", "steps": [
        task("flaky", "test.fail_times", config={"times": 2}, retry=FAST_RETRY), task("after")]})
    run = run_to_end("flaky")
    assert run.status == "completed", run.error
    row = steps_of(run)["flaky"]
    assert (row.attempt, row.failures, row.output) == (3, 2, {"attempt": 3})
    retries = events(run, "step_retry_scheduled")
    assert [e.data["delay_seconds"] for e in retries] == [0.1, 0.2]
    assert [e.data["attempt"] for e in retries] == [1, 2]
    assert retries[0].data["error"]["type"] == "RetryableError"
    assert "transient failure on attempt 1" in retries[0].message


def test_backoff_jitter_stays_between_half_and_all_of_the_delay_and_is_capped(engine: Any, workflow: Any) -> None:
    retry = {"max_attempts": 4, "backoff_seconds": 0.1, "backoff_multiplier": 3, "max_backoff_seconds": 0.5}
    workflow({"name": "jittery", "steps": [task("flaky", "test.fail_times", config={"times": 3}, retry=retry)]})
    run = run_to_end("jittery")
    assert run.status == "completed", run.error
    delays = [e.data["delay_seconds"] for e in events(run, "step_retry_scheduled")]
    assert len(delays) == 3
    for delay, base in zip(delays, [0.1, 0.3, 0.5], strict=True):  # 0.9 capped at 0.5
        assert base / 2 <= delay <= base


def test_a_permanent_error_fails_the_run_at_once_with_a_clear_error(engine: Any, workflow: Any) -> None:
    workflow({"name": "doomed", "steps": [
        task("first"), task("fatal", "test.permanent", config={"message": "card declined"},
                            retry={"max_attempts": 5, "backoff_seconds": 0.1}), task("never")]})
    run = run_to_end("doomed")
    assert run.status == "failed"
    error = error_of(run)
    assert (error["type"], error["message"], error["step"]) == ("PermanentError", "card declined", "fatal")
    rows = steps_of(run)
    assert (rows["fatal"].attempt, rows["fatal"].status) == (1, "failed")
    assert "never" not in rows
    assert not events(run, "step_retry_scheduled")


def test_an_unexpected_exception_is_retried_until_attempts_run_out(engine: Any, workflow: Any) -> None:
    workflow({"name": "buggy", "steps": [task("bug", "test.crash", retry={"max_attempts": 2, "backoff_seconds": 0.1})]})
    run = run_to_end("buggy")
    assert run.status == "failed"
    assert error_of(run)["type"] == "ValueError" and "unexpected bug" in error_of(run)["message"]
    assert "Traceback" in error_of(run)["traceback"]
    assert steps_of(run)["bug"].attempt == 2
    assert len(events(run, "step_retry_scheduled")) == 1


def test_a_failure_branch_is_taken_instead_of_failing_the_run(engine: Any, workflow: Any) -> None:
    workflow({"name": "rescue", "steps": [
        task("fetch", "test.permanent", config={"message": "404"}, on_failure="recover"),
        task("happy", "echo", config={"path": "happy"}, next="end"),
        task("recover", "echo", config={"why": "{{ steps.fetch.error.message }}",
                                        "status": "{{ steps.fetch.status }}"}),
    ]})
    run = run_to_end("rescue")
    assert run.status == "completed", run.error
    assert run.output == {"why": "404", "status": "failed"}
    rows = steps_of(run)
    assert list(rows) == ["fetch", "recover"]
    assert events(run, "failure_branch")[0].data == {"to": "recover"}


def test_a_failure_branch_inside_a_parallel_branch_keeps_the_join_going(engine: Any, workflow: Any) -> None:
    workflow({"name": "rescue-fan", "steps": [{"name": "both", "type": "parallel", "branches": {
        "a": [task("try", "test.permanent", on_failure="fallback"), task("skip-me", next="end"),
              task("fallback", "test.value", config={"value": "fell back"})],
        "b": [task("b1", "test.value", config={"value": "fine"})],
    }}]})
    run = run_to_end("rescue-fan")
    assert run.status == "completed", run.error
    assert run.output == {"a": "fell back", "b": "fine"}


def test_on_failure_end_finishes_the_sequence_after_a_failure(engine: Any, workflow: Any) -> None:
    workflow({"name": "shrug", "steps": [task("first", "echo", config={"v": 1}),
                                         task("try", "test.permanent", on_failure="end"), task("never")]})
    run = run_to_end("shrug")
    assert run.status == "completed", run.error
    assert "never" not in steps_of(run)


def test_a_step_timeout_counts_as_a_retryable_failure(engine: Any, workflow: Any) -> None:
    workflow({"name": "slowpoke", "steps": [task(
        "slow", "test.slow_first", config={"times": 1, "seconds": 5}, timeout_seconds=0.5,
        retry={"max_attempts": 2, "backoff_seconds": 0.1})]})
    run = run_to_end("slowpoke")
    assert run.status == "completed", run.error
    assert run.output == {"attempt": 2}
    [retry] = events(run, "step_retry_scheduled")
    assert retry.data["error"]["type"] == "StepTimeout"
    assert "timeout of 0.5s" in retry.message


def test_a_handler_cannot_swallow_its_timeout(engine: Any, workflow: Any) -> None:
    workflow({"name": "swallower", "steps": [task("greedy", "test.swallow", config={"seconds": 5},
                                                  timeout_seconds=0.3)]})
    run = run_to_end("swallower")
    assert run.status == "failed"
    assert error_of(run)["type"] == "StepTimeout" and "timeout of 0.3s" in error_of(run)["message"]


def test_a_step_that_always_times_out_fails_the_run(engine: Any, workflow: Any) -> None:
    workflow({"name": "too-slow", "steps": [task(
        "slow", "test.slow_first", config={"times": 9, "seconds": 5}, timeout_seconds=0.3,
        retry={"max_attempts": 2, "backoff_seconds": 0.1})]})
    run = run_to_end("too-slow")
    assert run.status == "failed"
    assert error_of(run)["type"] == "StepTimeout" and "timeout of 0.3s" in error_of(run)["message"]
    assert steps_of(run)["slow"].attempt == 2


@pytest.mark.parametrize("handler, fragment", [("test.not_json", "not JSON-serialisable"),
                                               ("test.nan", "not JSON-serialisable")])
def test_output_that_is_not_json_fails_the_step_clearly_without_retries(engine: Any, workflow: Any, handler: str,
                                                                         fragment: str) -> None:
    workflow({"name": f"odd-{handler[5:]}", "steps": [task("odd", handler, retry=FAST_RETRY)]})
    run = run_to_end(f"odd-{handler[5:]}")
    assert run.status == "failed"
    assert error_of(run)["type"] == "NotJSONSerializable" and fragment in error_of(run)["message"]
    assert steps_of(run)["odd"].attempt == 1


def test_a_template_that_fails_at_run_time_fails_the_step_without_retries(engine: Any, workflow: Any) -> None:
    workflow({"name": "typo", "steps": [task("t", "echo", config={"x": "{{ input.nope }}"}, retry=FAST_RETRY)]})
    run = run_to_end("typo")
    assert run.status == "failed"
    assert "'dict object' has no attribute 'nope'" in error_of(run)["message"]
    assert steps_of(run)["t"].attempt == 1


def test_a_condition_that_cannot_be_evaluated_fails_the_run(engine: Any, workflow: Any) -> None:
    workflow({"name": "bad-if", "steps": [task("a"), {"name": "c", "type": "condition", "if": "1 / 0 > input.x",
                                                      "then": "end"}]})
    run = run_to_end("bad-if", {"x": 1})
    assert run.status == "failed"
    assert error_of(run)["type"] == "template_error" and "ZeroDivisionError" in error_of(run)["message"]


# --- control actions ------------------------------------------------------------------------------


def test_cancel_stops_a_running_step_from_moving_the_run_on(engine: Any, workflow: Any, ledger: Path) -> None:
    workflow({"name": "cancellable", "steps": [
        task("slow", "test.ledger", config={"sleep": 0.8, "ledger": str(ledger)}), task("after")]})
    run = start_run("cancellable", {}).run
    wait_for_step(run, "slow", "running")
    cancel_run(run.pk, actor="alice", reason="changed my mind")
    wait_until(lambda: read_ledger(ledger), timeout=10, message="the handler to finish")
    run = wait_for_run(run.pk)
    assert run.status == "cancelled"
    assert run.error == {"type": "cancelled", "message": "changed my mind"}
    wait_until(lambda: not StepExecution.objects.filter(run=run, lease_owner__gt="").exists(), timeout=5)
    rows = steps_of(run)
    assert list(rows) == ["slow"] and rows["slow"].status == "cancelled"
    assert events(run, "control_cancel")[0].actor == "alice"
    with pytest.raises(IllegalTransition):
        cancel_run(run.pk)


def test_cancel_a_waiting_run_cancels_its_child_runs_too(engine: Any, workflow: Any) -> None:
    workflow({"name": "sleepy-child", "steps": [{"name": "nap", "type": "wait", "seconds": 60}]})
    workflow({"name": "sleepy-parent", "steps": [{"name": "sub", "type": "workflow", "workflow": "sleepy-child"}]})
    run = start_run("sleepy-parent", {}).run
    wait_until(lambda: Run.objects.get(pk=run.pk).status == "waiting", timeout=10, message="parent to wait")
    cancel_run(run.pk)
    child = Run.objects.get(parent_run=run)
    assert wait_for_run(child.pk, timeout=10).status == "cancelled"
    assert steps_of(child)["nap"].status == "cancelled"


def test_pause_holds_the_next_step_and_resume_lets_it_run(engine: Any, workflow: Any, ledger: Path) -> None:
    workflow({"name": "pausable", "steps": [
        # s0 runs long enough for the pause to land while it runs, on a loaded machine too.
        task(f"s{i}", "test.ledger", config={"sleep": 3 if i == 0 else 0, "ledger": str(ledger)})
        for i in range(3)]})
    run = start_run("pausable", {}).run
    wait_for_step(run, "s0", "running")
    assert pause_run(run.pk, actor="ops").status == "paused"
    s1 = wait_for_step(run, "s1", "ready")  # s0 finished; its successor is recorded but held
    time.sleep(1.0)  # longer than the reconciler's sweep: nothing may pick s1 up while paused
    assert Run.objects.get(pk=run.pk).status == "paused"
    assert StepExecution.objects.get(pk=s1.pk).status == "ready"
    assert len(read_ledger(ledger)) == 1
    with pytest.raises(IllegalTransition):
        pause_run(run.pk)
    resume_run(run.pk, actor="ops")
    run = wait_for_run(run.pk)
    assert run.status == "completed"
    assert [line.split()[1] for line in read_ledger(ledger)] == ["s0", "s1", "s2"]
    assert [e.kind for e in RunEvent.objects.filter(run=run, kind__startswith="control_")] == [
        "control_pause", "control_resume"]


def test_a_run_paused_during_a_retry_backoff_retries_after_resume(engine: Any, workflow: Any) -> None:
    workflow({"name": "pause-backoff", "steps": [task("flaky", "test.fail_times", config={"times": 1},
                                                      retry={"max_attempts": 2, "backoff_seconds": 1,
                                                             "jitter": False})]})
    run = start_run("pause-backoff", {}).run
    wait_until(lambda: events(run, "step_retry_scheduled"), timeout=20, message="the first failure")
    pause_run(run.pk)
    resume_run(run.pk)
    run = wait_for_run(run.pk)
    assert run.status == "completed", run.error
    assert StepExecution.objects.get(run=run, key="flaky").attempt == 2


def test_retry_run_resumes_from_the_failed_step_and_leaves_completed_steps_alone(engine: Any, workflow: Any,
                                                                                  ledger: Path) -> None:
    workflow({"name": "retryable", "steps": [
        task("s0", "test.ledger", config={"ledger": str(ledger)}),
        task("s1", "test.fail_times", config={"times": 1}),
        task("s2", "test.ledger", config={"ledger": str(ledger)}),
    ]})
    run = run_to_end("retryable")
    assert run.status == "failed" and error_of(run)["step"] == "s1"
    with pytest.raises(IllegalTransition):
        resume_run(run.pk)
    retry_run(run.pk, actor="ops")
    run = wait_for_run(run.pk)
    assert run.status == "completed", run.error
    assert run.error is None
    assert [line.split()[1] for line in read_ledger(ledger)] == ["s0", "s2"]
    rows = steps_of(run)
    assert (rows["s0"].attempt, rows["s1"].attempt, rows["s2"].attempt) == (1, 2, 1)
    with pytest.raises(IllegalTransition):
        retry_run(run.pk)


# --- starting runs -----------------------------------------------------------------------------


def test_two_concurrent_starts_with_one_idempotency_key_give_one_run(engine: Any, workflow: Any) -> None:
    workflow({"name": "once", "steps": [task("a")]})
    barrier = threading.Barrier(4)
    results: list[Any] = []

    def start() -> None:
        try:
            barrier.wait()
            results.append(start_run("once", {"n": 1}, idempotency_key="order-42"))
        except Exception as exc:  # surfaced by the assertion below
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(not isinstance(r, Exception) for r in results), results
    assert len({r.run.pk for r in results}) == 1
    assert sum(1 for r in results if r.created) == 1
    assert Run.objects.filter(idempotency_key="order-42").count() == 1
    assert wait_for_run(results[0].run.pk).status == "completed"
    # Another workflow may use the same key for its own run.
    workflow({"name": "once-too", "steps": [task("a")]})
    assert start_run("once-too", {}, idempotency_key="order-42").run.pk != results[0].run.pk


def test_bad_run_input_is_refused_with_paths_and_nothing_is_written(engine: Any, workflow: Any) -> None:
    workflow({"name": "typed", "input_schema": {
        "type": "object", "required": ["email", "count"], "additionalProperties": False,
        "properties": {"email": {"type": "string"}, "count": {"type": "integer", "minimum": 1}}},
        "steps": [task("a")]})
    with pytest.raises(StartError) as info:
        start_run("typed", {"count": 0, "extra": True})
    paths = [p for p, _ in info.value.errors]
    assert set(paths) == {"input", "input.count"}
    assert "'email' is a required property" in str(info.value)
    with pytest.raises(StartError) as info:
        start_run("typed", {"email": "a@b", "count": 1}, idempotency_key="  ")
    assert [p for p, _ in info.value.errors] == ["idempotency_key"]
    with pytest.raises(StartError) as info:
        start_run("no-such-workflow", {})
    assert [p for p, _ in info.value.errors] == ["workflow"]
    assert (Run.objects.count(), StepExecution.objects.count(), RunEvent.objects.count()) == (0, 0, 0)


# --- commands ------------------------------------------------------------------------------------


def command(*args: str) -> tuple[int | None, str, str]:
    """Run a management command in-process; returns (exit code or None, stdout, stderr)."""
    out, err = StringIO(), StringIO()
    code: int | None = None
    try:
        call_command(*args, stdout=out, stderr=err)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_start_run_wait_exit_codes(engine: Any, workflow: Any, tmp_path: Path) -> None:
    workflow({"name": "cmd-ok", "steps": [task("a", "echo", config={"n": "{{ input.n }}"})]})
    workflow({"name": "cmd-fail", "steps": [task("a", "test.permanent")]})
    workflow({"name": "cmd-slow", "steps": [{"name": "nap", "type": "wait", "seconds": 60}]})
    code, out, err = command("start_run", "cmd-ok", "--input", '{"n": 5}', "--wait", "--timeout", "30")
    run_id = out.strip().splitlines()[-1]
    assert code == 0 and Run.objects.get(pk=run_id).output == {"n": 5}
    assert "completed" in err
    code, out, err = command("start_run", "cmd-fail", "--wait", "--timeout", "30")
    assert code == 1 and "failed: PermanentError: this cannot work" in err
    assert Run.objects.get(pk=out.strip().splitlines()[-1]).status == "failed"
    code, out, err = command("start_run", "cmd-slow", "--wait", "--timeout", "0.5")
    assert code == 2 and "timed out after 0.5s" in err
    slow_id = out.strip().splitlines()[-1]
    assert Run.objects.get(pk=slow_id).status == "waiting"  # the run goes on

    # Cancelled while someone waits on it: exit 1.
    codes: list[Any] = []

    def wait_in_thread() -> None:
        try:
            codes.append(command("start_run", "cmd-slow", "--idempotency-key", "k-cancel", "--wait",
                                 "--timeout", "30"))
        finally:
            connection.close()

    thread = threading.Thread(target=wait_in_thread)
    thread.start()
    waiting = wait_until(lambda: Run.objects.filter(idempotency_key="k-cancel", status="waiting").first(),
                         timeout=10, message="the run to wait")
    cancel_run(waiting.pk)
    thread.join(timeout=30)
    code, out, err = codes[0]
    assert code == 1 and out.strip().splitlines()[-1] == str(waiting.pk) and "cancelled" in err


def test_start_run_reads_input_files_and_honours_idempotency_keys(engine: Any, workflow: Any,
                                                                   tmp_path: Path) -> None:
    workflow({"name": "cmd-in", "input_schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
              "steps": [task("a", "echo", config={"n": "{{ input.n }}"})]})
    path = tmp_path / "input.json"
    path.write_text('{"n": 7}')
    code, out, err = command("start_run", "cmd-in", "--input-file", str(path), "--idempotency-key", "k1")
    first = out.strip().splitlines()[-1]
    assert code is None and uuid.UUID(first)
    code, out, err = command("start_run", "cmd-in", "--input-file", str(path), "--idempotency-key", "k1")
    assert out.strip().splitlines()[-1] == first
    assert "idempotency key matched an existing run" in err
    assert wait_for_run(first).output == {"n": 7}

    path.write_text("[1, 2")
    with pytest.raises(CommandError, match="--input-file .* is not valid JSON"):
        call_command("start_run", "cmd-in", "--input-file", str(path))
    with pytest.raises(CommandError, match="cannot read"):
        call_command("start_run", "cmd-in", "--input-file", str(tmp_path / "missing.json"))
    with pytest.raises(CommandError, match="--input is not valid JSON"):
        call_command("start_run", "cmd-in", "--input", "{n: 1}")
    with pytest.raises(CommandError, match="input.n: 'x' is not of type 'integer'"):
        call_command("start_run", "cmd-in", "--input", '{"n": "x"}')
    with pytest.raises(CommandError, match="input: run input must be a JSON object"):
        call_command("start_run", "cmd-in", "--input", "[1]")
    with pytest.raises(CommandError, match="no workflow named 'nope'"):
        call_command("start_run", "nope")
    assert Run.objects.count() == 1


def test_start_run_as_a_process_prints_the_run_id_last_and_exits_with_the_outcome(engine: Any,
                                                                                   workflow: Any) -> None:
    workflow({"name": "proc-ok", "steps": [task("a")]})
    workflow({"name": "proc-fail", "steps": [task("a", "test.permanent")]})
    for name, expected in (("proc-ok", 0), ("proc-fail", 1)):
        done = subprocess.run([sys.executable, "manage.py", "start_run", name, "--wait", "--timeout", "60"],
                              cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=90)
        assert done.returncode == expected, done.stderr
        run_id = done.stdout.strip().splitlines()[-1]
        assert Run.objects.get(pk=run_id).status == ("completed" if expected == 0 else "failed")


def test_show_run_json_has_exactly_the_documented_keys(engine: Any, workflow: Any) -> None:
    workflow({"name": "shown", "steps": [
        task("a", "echo", config={"x": 1}), task("b", "test.fail_times", config={"times": 1}, retry=FAST_RETRY)]})
    run = run_to_end("shown", {"k": "v"})
    code, out, _ = command("show_run", str(run.pk), "--json")
    data = json.loads(out)
    assert set(data) == {"id", "workflow", "version", "status", "input", "output", "error", "forked_from",
                         "forked_from_step", "forks", "steps"}
    assert (data["forked_from"], data["forked_from_step"], data["forks"]) == (None, None, [])
    assert (data["id"], data["workflow"], data["version"], data["status"]) == (str(run.pk), "shown", 1, "completed")
    assert (data["input"], data["output"], data["error"]) == ({"k": "v"}, {"attempt": 2}, None)
    for step in data["steps"]:
        assert set(step) == {"name", "type", "status", "attempts", "output", "error", "started_at", "finished_at",
                             "llm_calls", "tool_calls"}
        assert step["llm_calls"] == step["tool_calls"] == []  # task steps call no model
    assert [(s["name"], s["type"], s["status"], s["attempts"]) for s in data["steps"]] == [
        ("a", "task", "completed", 1), ("b", "task", "completed", 2)]
    assert data["steps"][0]["output"] == {"x": 1}
    assert data["steps"][0]["started_at"] <= data["steps"][0]["finished_at"]


def test_show_run_draws_a_timeline(engine: Any, workflow: Any) -> None:
    workflow({"name": "drawn", "steps": [task("fetch", "test.fail_times", config={"times": 1}, retry=FAST_RETRY),
                                         task("boom", "test.permanent", config={"message": "bad thing"})]})
    run = run_to_end("drawn")
    _, out, _ = command("show_run", str(run.pk))
    assert f"Run {run.pk}  drawn v1  [failed]" in out
    fetch_line = next(line for line in out.splitlines() if line.strip().startswith("fetch"))
    assert "completed" in fetch_line and "1 retry" in fetch_line
    assert "boom" in out and "bad thing" in out
    assert "error: PermanentError: bad thing" in out


def test_control_commands_report_the_new_status_and_refuse_illegal_moves(engine: Any, workflow: Any) -> None:
    workflow({"name": "ctl", "steps": [{"name": "nap", "type": "wait", "seconds": 60}, task("after")]})
    run = start_run("ctl", {}).run
    wait_until(lambda: Run.objects.get(pk=run.pk).status == "waiting", timeout=10, message="run to wait")
    assert command("pause_run", str(run.pk))[1].strip() == f"pause {run.pk}: now paused"
    assert command("resume_run", str(run.pk))[1].strip() == f"resume {run.pk}: now waiting"
    with pytest.raises(CommandError, match="only a failed run can be retried"):
        call_command("retry_run", str(run.pk))
    assert command("cancel_run", str(run.pk), "--as", "bob")[1].strip() == f"cancel {run.pk}: now cancelled"
    assert events(Run.objects.get(pk=run.pk), "control_cancel")[0].actor == "bob"
    for verb in ("cancel_run", "pause_run", "resume_run", "retry_run"):
        with pytest.raises(CommandError, match="cancelled"):
            call_command(verb, str(run.pk))


@pytest.mark.parametrize("verb", ["show_run", "cancel_run", "pause_run", "resume_run", "retry_run"])
# A fixed UUID: xdist workers must collect the same test ids.
@pytest.mark.parametrize("run_id", ["3436c97a-91ca-49ad-aff8-3b9b3d5225e1", "not-a-run-id", "123"])
def test_every_command_refuses_an_unknown_run_id(db: Any, verb: str, run_id: str) -> None:
    with pytest.raises(CommandError, match=f"no run with id '{run_id}'"):
        call_command(verb, run_id)

