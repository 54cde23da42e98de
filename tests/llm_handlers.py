"""Tools and guardrail judges for the llm-step tests (in STEVORA_HANDLER_MODULES via settings_test)."""

from __future__ import annotations

import json
import time
from typing import Any

from steps.handlers import PermanentError, StepContext, handler
from tests.handlers import _append


@handler("test.tool.lookup")
def lookup(ctx: StepContext) -> dict[str, Any]:
    """Append ``<tool> <arguments> <idempotency key>`` to the run input's ledger, then answer."""
    args = ctx.config or {}
    if ctx.input.get("tool_sleep"):
        time.sleep(float(ctx.input["tool_sleep"]))
    if ctx.input.get("ledger"):
        line = f"{ctx.extra.get('tool')} {json.dumps(args, sort_keys=True)} {ctx.idempotency_key}"
        _append(ctx.input["ledger"], line)
    return {"found": f"facts about {args.get('query')}"}


@handler("test.tool.add")
def add(ctx: StepContext) -> dict[str, Any]:
    args = ctx.config or {}
    if ctx.input.get("ledger"):
        _append(ctx.input["ledger"], f"add {json.dumps(args, sort_keys=True)} {ctx.idempotency_key}")
    return {"sum": args["a"] + args["b"]}


@handler("test.tool.refuse")
def refuse(ctx: StepContext) -> None:
    raise PermanentError("this tool refuses every call")


@handler("test.guard.no_apology")
def no_apology(ctx: StepContext) -> dict[str, Any]:
    text = (ctx.config or {}).get("text") or ""
    return {"ok": "sorry" not in text.lower(), "reason": "the answer apologises"}


@handler("test.tool.charge")
def charge(ctx: StepContext) -> dict[str, Any]:
    """A side effect counted on entry: ``enter <args> <key>`` before the sleep (first entry only), ``done <key>``
    after."""
    args = ctx.config or {}
    if ctx.input.get("ledger"):
        _append(ctx.input["ledger"], f"enter {json.dumps(args, sort_keys=True)} {ctx.idempotency_key}")
    if ctx.input.get("tool_sleep"):
        with open(ctx.input["ledger"]) as f:  # only the first entry sleeps (the one a test kills)
            entries = sum(1 for line in f if line.startswith("enter ") and line.rstrip().endswith(ctx.idempotency_key))
        if entries <= 1:
            time.sleep(float(ctx.input["tool_sleep"]))
    if ctx.input.get("ledger"):
        _append(ctx.input["ledger"], f"done {ctx.idempotency_key}")
    return {"charged": args.get("amount")}
