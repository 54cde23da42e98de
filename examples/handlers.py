"""Handlers of the example workflows (loaded with STEVORA_HANDLER_MODULES=examples.handlers)."""

from __future__ import annotations

import hashlib
from typing import Any

from steps.handlers import RetryableError, StepContext, handler


@handler("demo.plan")
def plan(ctx: StepContext) -> dict[str, Any]:
    topic = ctx.config["topic"]
    return {"topic": topic, "sources": [f"{topic}-news", f"{topic}-forum", f"{topic}-papers", f"{topic}-blogs"]}


@handler("demo.fetch")
def fetch(ctx: StepContext) -> dict[str, Any]:
    source = ctx.config["source"]
    digest = hashlib.sha256(source.encode()).hexdigest()
    return {"source": source, "documents": 3 + int(digest[:2], 16) % 5}


@handler("demo.flaky")
def flaky(ctx: StepContext) -> dict[str, Any]:
    """Fails its first attempt with a transient error, like a rate-limited API."""
    if ctx.attempt == 1:
        raise RetryableError("upstream answered 503 (simulated); retrying with backoff")
    return {"attempt": ctx.attempt}


@handler("demo.sentiment")
def sentiment(ctx: StepContext) -> dict[str, Any]:
    total = sum(item["documents"] for item in ctx.config["gathered"])
    return {"score": round(0.5 + (total % 10) / 20, 2), "documents": total}


@handler("demo.keywords")
def keywords(ctx: StepContext) -> list[str]:
    return sorted({part for item in ctx.config["gathered"] for part in item["source"].split("-")})


@handler("demo.publish")
def publish(ctx: StepContext) -> dict[str, Any]:
    return {"published": True, "summary": ctx.config}


# --- tools of the agent-research workflow (an llm step calls them) ----------------------

_LIBRARY = [
    "Sea otters hold hands while they sleep so they do not drift apart.",
    "A group of otters resting in the water is called a raft.",
    "Otters have the densest fur of any animal: up to a million hairs per square inch.",
    "Sea otters use stones as tools to crack open shellfish.",
    "Llamas hum to communicate and are used as guard animals for sheep.",
    "Honeybees communicate the location of flowers with a waggle dance.",
]


@handler("demo.search_notes")
def search_notes(ctx: StepContext) -> dict[str, Any]:
    """Search a small offline library; a real deployment would call a search API here."""
    words = {w.lower().strip(".,") for w in str(ctx.config.get("query", "")).split() if len(w) > 2}
    hits = [line for line in _LIBRARY if words & {w.lower().strip(".,:") for w in line.split()}]
    return {"query": ctx.config.get("query"), "snippets": hits[:3] or ["no notes match; write from the research"]}


@handler("demo.word_count")
def word_count(ctx: StepContext) -> dict[str, Any]:
    return {"words": len(str(ctx.config.get("text", "")).split())}
