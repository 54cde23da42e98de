"""Retention: finished runs past their workspace's retention go with everything they own, in
batches; nothing of an unfinished run goes, nor a finished child whose parent is unfinished."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

from django.core.management import call_command
from django.db.models import Q
from django.utils import timezone

from approvals.models import Approval
from approvals.services import decide
from events.models import EventMatch
from events.services import deliver_event
from providers.models import LLMCall, ToolCall
from runs.models import Run, RunEvent, Workspace
from runs.services import purge_runs, start_run
from steps.models import StepExecution
from tests.approval_support import pending_approval, review_workflow, wait_parked
from tests.conftest import wait_for_run
from tests.support.llm_server import (  # noqa: F401  (fixtures)
    llm_server_fixture,
    llm_server_session_fixture,
    llm_workflow,
    make_provider,
)
from tests.support.workers import wait_until
from tests.test_llm_agent_loop import TOOLS
from webhooks.models import WebhookDelivery

OLD = dt.timedelta(days=40)


def age(*runs: Run, by: dt.timedelta = OLD) -> None:
    """Pretend these finished runs finished ``by`` ago."""
    for run in runs:
        Run.objects.filter(pk=run.pk).update(finished_at=timezone.now() - by)


def footprint(run_ids: list[Any]) -> dict[str, int]:
    """Every row the runs own, per table."""
    return {
        "runs": Run.objects.filter(pk__in=run_ids).count(),
        "steps": StepExecution.objects.filter(run_id__in=run_ids).count(),
        "history": RunEvent.objects.filter(run_id__in=run_ids).count(),
        "llm_calls": LLMCall.objects.filter(run_id__in=run_ids).count(),
        "tool_calls": ToolCall.objects.filter(step__run_id__in=run_ids).count(),
        "approvals": Approval.objects.filter(run_id__in=run_ids).count(),
        "event_matches": EventMatch.objects.filter(run_id__in=run_ids).count(),
    }


def delivery_for(run: Run, status: str) -> WebhookDelivery:
    """A webhook notice announcing the run's last history row, as the notice sweep writes it."""
    row = RunEvent.objects.filter(run_id=run.pk).order_by("-id").first()
    assert row is not None
    return WebhookDelivery.objects.create(workspace_id=run.workspace_id, url=f"https://example.com/{status}",
                                          event="run_completed", payload={"run": {"id": str(run.pk)}},
                                          status=status, source_event=row.pk)


def test_finished_runs_past_retention_go_with_everything_they_own_and_unfinished_runs_keep_everything(
        engine: Any, workflow: Any, llm_server: Any, alice: Any) -> None:
    # A finished agent run: LLM calls and a tool call.
    make_provider(llm_server, "agent", kind="openai", max_retries=0)
    llm_server.script("agent", {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"query": "x"}}]},
                      {"text": "done"})
    workflow(llm_workflow("agent-flow", provider="agent", tools=TOOLS))
    agent = wait_for_run(start_run("agent-flow", {}).run.pk)
    assert agent.status == "completed", agent.error

    # A finished run that consumed an event; another still waiting for its event.
    workflow({"name": "order", "steps": [
        {"name": "paid", "type": "external_event", "event": "paid", "key": "{{ input.order }}"}]})
    paid, unpaid = start_run("order", {"order": "A"}).run, start_run("order", {"order": "B"}).run
    wait_parked(paid.pk)
    wait_parked(unpaid.pk)
    deliver_event("paid", key="A", payload={})
    paid = wait_for_run(paid.pk)

    # A finished run with a decided approval; another whose approval is still pending.
    workflow(review_workflow())
    reviewed, unreviewed = start_run("review-flow", {"topic": "a"}).run, start_run("review-flow", {"topic": "b"}).run
    decide(pending_approval(reviewed.pk).pk, user=None, operator="ops", approve=True)
    reviewed = wait_for_run(reviewed.pk)
    pending_approval(unreviewed.pk)

    # A parent still waiting whose child run has finished: the child must stay.
    workflow({"name": "kid", "steps": [{"name": "v", "type": "task", "handler": "test.value",
                                        "config": {"value": 1}}]})
    workflow({"name": "elder", "steps": [
        {"name": "sub", "type": "workflow", "workflow": "kid"},
        {"name": "hold", "type": "external_event", "event": "never"}]})
    elder = wait_parked(start_run("elder", {}).run.pk)
    kid = wait_for_run(Run.objects.get(parent_run=elder).pk)

    # A finished run inside retention.
    young = wait_for_run(start_run("kid", {}).run.pk)

    finished = [agent, paid, reviewed]
    for run in finished:
        assert run.status == "completed", run.error
    age(*finished, kid)
    # Unfinished runs look old too: their age must not matter.
    Run.objects.filter(pk__in=[unpaid.pk, unreviewed.pk, elder.pk]).update(created_at=timezone.now() - OLD)
    age(young, by=dt.timedelta(days=1))
    settled, sending = delivery_for(agent, "succeeded"), delivery_for(paid, "pending")
    kept_ids = [unpaid.pk, unreviewed.pk, elder.pk, kid.pk, young.pk]
    kept_before = footprint(kept_ids)
    gone_before = footprint([r.pk for r in finished])
    assert gone_before["llm_calls"] >= 2 and gone_before["tool_calls"] == 1
    assert gone_before["approvals"] == 1 and gone_before["event_matches"] == 1

    Workspace.objects.filter(slug="default").update(retention_days=30)
    dry = purge_runs(dry_run=True, batch_size=2)
    assert footprint([r.pk for r in finished]) == gone_before
    assert WebhookDelivery.objects.filter(pk=settled.pk).exists()

    report = purge_runs(batch_size=2)

    assert report.runs == 3 and report.batches == 2
    assert dict(report.counts) == dict(dry.counts)
    assert report.counts["runs.Run"] == 3
    assert report.counts["steps.StepExecution"] == gone_before["steps"]
    assert report.counts["runs.RunEvent"] == gone_before["history"]
    assert report.counts["providers.LLMCall"] == gone_before["llm_calls"]
    assert report.counts["providers.ToolCall"] == 1
    assert report.counts["approvals.Approval"] == 1
    assert report.counts["events.EventMatch"] == 1
    assert report.counts["webhooks.WebhookDelivery"] == 1
    assert footprint([r.pk for r in finished]) == dict.fromkeys(gone_before, 0)
    assert not WebhookDelivery.objects.filter(pk=settled.pk).exists()
    assert WebhookDelivery.objects.filter(pk=sending.pk).exists(), "a delivery still being sent stays"
    assert footprint(kept_ids) == kept_before
    assert Run.objects.get(pk=kid.pk).parent_run_id == elder.pk

    # The unfinished runs still finish.
    deliver_event("paid", key="B", payload={})
    assert wait_for_run(unpaid.pk).status == "completed"


def test_a_finished_parent_keeps_a_child_that_is_still_running(db: Any, workflow: Any) -> None:
    workflow({"name": "p", "steps": [{"name": "v", "type": "task", "handler": "test.value", "config": {"value": 1}}]})
    parent = start_run("p", {}).run
    child = start_run("p", {}).run
    Run.objects.filter(pk=parent.pk).update(status="completed", finished_at=timezone.now() - OLD)
    Run.objects.filter(pk=child.pk).update(parent_run=parent)

    assert purge_runs(older_than_days=30).runs == 0
    Run.objects.filter(pk=child.pk).update(status="cancelled", finished_at=timezone.now() - OLD)
    assert purge_runs(older_than_days=30).runs == 2
    assert not Run.objects.filter(Q(pk=parent.pk) | Q(pk=child.pk)).exists()


def test_without_a_retention_nothing_is_purged_and_a_workspace_can_be_named(db: Any, workflow: Any) -> None:
    workflow({"name": "p", "steps": [{"name": "v", "type": "task", "handler": "test.value", "config": {"value": 1}}]})
    run = start_run("p", {}).run
    Run.objects.filter(pk=run.pk).update(status="failed", finished_at=timezone.now() - OLD)
    Workspace.objects.create(slug="other", name="Other", retention_days=1)

    assert purge_runs().runs == 0, "default keeps forever; other has no runs"
    assert purge_runs(workspace="other", older_than_days=0).runs == 0
    assert purge_runs(workspace="default", older_than_days=30).runs == 1


def test_purge_runs_command_prints_counts_per_table_and_its_progress(db: Any, workflow: Any) -> None:
    workflow({"name": "p", "steps": [{"name": "v", "type": "task", "handler": "test.value", "config": {"value": 1}}]})
    runs = [start_run("p", {}).run for _ in range(3)]
    Run.objects.filter(pk__in=[r.pk for r in runs]).update(status="cancelled", finished_at=timezone.now() - OLD)
    out, err = io.StringIO(), io.StringIO()

    call_command("purge_runs", "--older-than", "30", "--dry-run", "--batch-size", "2", stdout=out, stderr=err)
    assert "dry run: would purge 3 runs in 2 batches" in out.getvalue()
    assert "  runs.Run: 3" in out.getvalue() and "  steps.StepExecution: 3" in out.getvalue()
    assert "batch 1 (default): would purge 2 runs so far" in err.getvalue()
    assert Run.objects.count() == 3

    out = io.StringIO()
    call_command("purge_runs", "--older-than", "30", "--workspace", "default", stdout=out, stderr=io.StringIO())
    assert "purged 3 runs in 1 batches" in out.getvalue()
    assert Run.objects.count() == 0


def test_the_engine_purges_on_its_schedule(fresh_engine: Any, workflow: Any) -> None:
    workflow({"name": "p", "steps": [{"name": "v", "type": "task", "handler": "test.value", "config": {"value": 1}}]})
    fresh_engine(STEVORA_RETENTION_DAYS="30", STEVORA_RETENTION_SWEEP_SECONDS="0.2")
    old, new = (wait_for_run(start_run("p", {}).run.pk) for _ in range(2))
    age(old)
    wait_until(lambda: not Run.objects.filter(pk=old.pk).exists(), timeout=15,
               message="the retention sweep to purge the old run")
    assert Run.objects.filter(pk=new.pk).exists()
