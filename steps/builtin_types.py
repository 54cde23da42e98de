"""The built-in step types of this app: ``task`` (a registered handler) and ``wait``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from steps import clock
from steps.templating import render_value

from . import types
from .handlers import PermanentError, registry

if TYPE_CHECKING:
    from runs.definitions import StepSpec
    from runs.models import Run

    from .models import StepExecution


class TaskType(types.StepType):
    name = "task"
    work = True

    def render(self, spec: StepSpec, context: dict[str, Any]) -> Any:
        return render_value(spec.raw.get("config"), context)

    def execute(self, invocation: types.Invocation) -> Any:
        fn = registry.get(invocation.spec.raw["handler"])
        return fn(invocation.ctx)


class WaitType(types.StepType):
    """``seconds: 5`` or ``until: <ISO timestamp template>``; holds nothing while it waits."""

    name = "wait"

    def activate(self, run: Run, step: StepExecution, spec: StepSpec, context: dict[str, Any]) -> types.Outcome:
        now = clock.now()
        if "seconds" in spec.raw:
            raw = render_value(spec.raw["seconds"], context)
            try:
                seconds = float(raw)
            except (TypeError, ValueError):
                return types.Fail({"type": "template_error",
                                   "message": f"wait {spec.name!r}: seconds must be a number, got {raw!r}"})
            if seconds < 0:
                return types.Fail({"type": "template_error",
                                   "message": f"wait {spec.name!r}: seconds must not be negative, got {seconds}"})
            wake_at = now + timedelta(seconds=seconds)
        else:
            value = render_value(spec.raw["until"], context)
            parsed = value if isinstance(value, datetime) else parse_datetime(str(value))
            if parsed is None:
                return types.Fail({"type": "template_error",
                                   "message": f"wait {spec.name!r}: until is not an ISO timestamp: {value!r}"})
            if timezone.is_naive(parsed):
                parsed = timezone.make_aware(parsed, timezone.get_default_timezone())
            wake_at = parsed
        if wake_at <= now:
            return types.Complete({"waited_until": wake_at.isoformat()})
        return types.Wait(wake_at=wake_at, state={"until": wake_at.isoformat()})

    def wake(self, run: Run, step: StepExecution, spec: StepSpec) -> types.Outcome:
        return types.Complete({"waited_until": step.state.get("until")})


def register_builtin_types() -> None:
    types.register(TaskType())
    types.register(WaitType())


__all__ = ["PermanentError", "register_builtin_types"]
