"""Streamed answers: what the live channel and the stream assembly cost per piece.

Issue 13, "Live token streams". In one process, no engine:

(a) publish: ``steps.live.publish`` of N pieces of text to one run's channel — the embedded
    SQLite file (a temporary STEVORA_VAR_DIR) and, with ``--redis-url``, a Redis stream;
    microseconds per piece (the worker pays this per coalesced write, at most ~20 a second
    per call).
(b) read: a watcher reading them all back from the start, 500 at a time; microseconds per piece.
(c) assembly: an OpenAI and an Anthropic event stream of N text pieces parsed line by line
    (``SSEParser`` + ``OpenAIStream`` / ``AnthropicStream``) into the whole answer;
    microseconds per event, next to parsing the same answer whole.

Prints medians of five rounds; never a test: the numbers depend on the machine and its load.

    .venv/bin/python bench/live_stream.py [--pieces 2000] [--redis-url redis://127.0.0.1:6379/7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def configure(redis_url: str | None, var_dir: str) -> None:
    sys.path.insert(0, str(ROOT))
    from django.conf import settings

    if not settings.configured:
        settings.configure(CELERY_BROKER_URL=redis_url or "memory://", VAR_DIR=Path(var_dir),
                           STEVORA={"LIVE_TTL_SECONDS": 600, "LIVE_MAX_PER_RUN": 100000})
    else:
        settings.CELERY_BROKER_URL = redis_url or "memory://"


def channel(pieces: int) -> tuple[float, float]:
    from steps import live

    run = uuid.uuid4()
    t0 = time.perf_counter()
    for i in range(pieces):
        live.publish(run, step="draft", attempt=1, round=1, provider="bench", text=f"word{i} ", call=1)
    publish = (time.perf_counter() - t0) / pieces * 1e6
    t0 = time.perf_counter()
    cursor, got = "", 0
    while True:
        batch = live.read(run, cursor, limit=500)
        if not batch:
            break
        got += len(batch)
        cursor = batch[-1]["cursor"]
    read = (time.perf_counter() - t0) / max(got, 1) * 1e6
    assert got == pieces, (got, pieces)
    return publish, read


def assembly(pieces: int) -> dict[str, float]:
    from providers.wire import AnthropicStream, OpenAIStream, SSEParser
    from tests.support.llm_server import anthropic_events, openai_events

    text = " ".join(f"word{i}" for i in range(pieces * 2))
    openai_whole = {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    anthropic_whole = {"id": "m", "type": "message", "role": "assistant", "model": "m",
                       "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                       "usage": {"input_tokens": 1, "output_tokens": 2}}
    out = {}
    for name, events, assembler in (("openai", openai_events(openai_whole, usage=True), OpenAIStream),
                                    ("anthropic", anthropic_events(anthropic_whole), AnthropicStream)):
        lines = "".join(events).split("\n")
        t0 = time.perf_counter()
        parser, asm = SSEParser(), assembler()
        for line in lines:
            event = parser.feed(line)
            if event is not None:
                asm.feed(*event)
        body = asm.body()
        out[f"{name} per event"] = (time.perf_counter() - t0) / len(events) * 1e6
        whole = json.dumps(openai_whole if name == "openai" else anthropic_whole)
        t0 = time.perf_counter()
        json.loads(whole)
        out[f"{name} whole body, per piece"] = (time.perf_counter() - t0) / len(events) * 1e6
        assert (body["choices"][0]["message"]["content"] if name == "openai" else body["content"][0]["text"]) == text
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pieces", type=int, default=2000, help="pieces of text per round (default 2000)")
    parser.add_argument("--redis-url", help="also measure a Redis stream (e.g. redis://127.0.0.1:6379/7)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stevora-live-bench-") as var_dir:
        results: dict[str, Any] = {}
        for backend in ["sqlite"] + (["redis"] if args.redis_url else []):
            configure(args.redis_url if backend == "redis" else None, var_dir)
            rounds = [channel(args.pieces) for _ in range(5)]
            results[f"{backend} publish µs/piece"] = statistics.median(r[0] for r in rounds)
            results[f"{backend} read µs/piece"] = statistics.median(r[1] for r in rounds)
        rounds_asm = [assembly(args.pieces) for _ in range(5)]
        for key in rounds_asm[0]:
            results[f"assembly {key} µs"] = statistics.median(r[key] for r in rounds_asm)
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value:9.2f}")


if __name__ == "__main__":
    main()
