"""Step types behind a small registry of names (DESIGN §7).

*Work* types (``task``, ``llm``) run in a worker, outside any transaction, after a
claim. *Inline* types (``wait``, ``approval``, ``external_event``) are activated by
the engine inside the transaction that makes them current: they complete at once or
park the step as ``waiting`` (holding nothing) until a decision, an event or the
timer sweep resumes it. The control-flow types (``condition``, ``parallel``, ``map``,
``workflow``) belong to the engine itself (``runs.engine``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runs.definitions import StepSpec, WorkflowSpec
    from runs.models import Run

    from .handlers import StepContext
    from .models import StepExecution


@dataclass
class Complete:
    """The step is done with ``output``; ``goto`` overrides the successor (a step name or ``end``)."""

    output: Any = None
    goto: str | None = None


@dataclass
class Wait:
    """Park the step as ``waiting`` until something resumes it, or ``wake_at``."""

    wake_at: datetime | None = None
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fail:
    """Fail the step (and take its failure branch, or fail the run)."""

    error: dict[str, Any]


Outcome = Complete | Wait | Fail


class Park(Exception):  # noqa: N818 (an outcome raised from deep inside a work type, not an error)
    """Raised by a work type's ``execute``: park the step as ``waiting`` until someone decides.

    The worker is given back at once (the run holds nothing while it waits). A decision
    puts the step back to ``ready`` (``runs.services.requeue_waiting_step``) — it is then
    executed again and reads the decision from its own rows — or fails it
    (``runs.services.resume_waiting_step`` with ``Fail``). ``before_commit`` runs inside
    the engine's transaction, after the fenced update made the step waiting: what the
    decision is about (an approval request) exists exactly when the step is parked.
    """

    def __init__(self, reason: str, *, state: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
                 before_commit: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.state = state or {}
        self.data = data or {}
        self.before_commit = before_commit


class HandBack(Exception):  # noqa: N818 (an outcome raised from deep inside a work type, not an error)
    """Raised by a work type's ``execute``: nothing was done, give the step back to the queue
    untouched (its attempt is not spent) to be rung again after ``delay`` seconds, holding no
    worker meanwhile (the engine's ``hand_back``). The llm step raises it when a provider's
    rate limit will not open for longer than a worker should wait.
    """

    def __init__(self, reason: str, *, delay: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


@dataclass
class Invocation:
    """Everything a work type needs to execute one attempt."""

    run: Run
    step: StepExecution
    spec: StepSpec
    workflow: WorkflowSpec
    ctx: StepContext
    template_context: dict[str, Any]


class StepType:
    name: str = ""
    work: bool = False

    def render(self, spec: StepSpec, context: dict[str, Any]) -> Any:
        """Work types: the step's rendered input, stored on the row and given to the handler."""
        return None

    def execute(self, invocation: Invocation) -> Any:
        """Work types: run one attempt (outside a transaction) and return the output."""
        raise NotImplementedError

    def activate(self, run: Run, step: StepExecution, spec: StepSpec, context: dict[str, Any]) -> Outcome:
        """Inline types: called inside the engine's transaction with the new step row."""
        raise NotImplementedError

    def activate_many(self, items: list[tuple[Run, StepExecution]], spec: StepSpec,
                      contexts: list[dict[str, Any]]) -> list[Outcome] | None:
        """Inline types, optionally: ``activate`` for the first steps of a batch of runs (one
        workflow, inserted together), writing the same rows in a few statements for all;
        an outcome per item. None (the default): the engine calls ``activate`` for each."""
        return None

    def wake(self, run: Run, step: StepExecution, spec: StepSpec) -> Outcome:
        """Inline types: ``wake_at`` passed while waiting (timer done, timeout)."""
        return Fail({"type": "timeout", "message": f"step {step.key} timed out while waiting"})

    def cancel(self, step: StepExecution) -> None:
        """The waiting step was cancelled (run cancelled or a sibling failed)."""

    def check(self, raw: dict[str, Any], handler_exists: Any) -> list[tuple[str, str]]:
        """Load-time checks the JSON Schema cannot make: (path below the step, message) pairs.

        ``handler_exists`` is None when handlers are not to be checked.
        """
        return []


_types: dict[str, StepType] = {}


def register(step_type: StepType) -> StepType:
    _types[step_type.name] = step_type
    return step_type


def get(name: str) -> StepType | None:
    return _types.get(name)


def is_work(name: str) -> bool:
    step_type = _types.get(name)
    return bool(step_type and step_type.work)
