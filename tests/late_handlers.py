"""A handler module the shared test engine does not import (tests of the worker registry
start an engine with it added to STEVORA_HANDLER_MODULES)."""

from __future__ import annotations

from typing import Any

from steps.handlers import StepContext, handler


@handler("test.late")
def late(ctx: StepContext) -> dict[str, Any]:
    return {"ran_on": "a worker that has the module"}
