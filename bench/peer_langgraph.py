"""The bench workflow on LangGraph: a graph of 10 no-op nodes with ``PostgresSaver``,
``durability="sync"`` (each step's checkpoint written before the next step starts).

Run by bench/peers.py with the peers' interpreter (.venv-peers); prints one JSON line:
{"per_step": [seconds, ...], "throughput": steps per second}. Graphs run in this process;
the burst runs them on a thread pool sharing a connection pool.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypedDict

from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.graph import END, START, StateGraph
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

STEPS = 10


class State(TypedDict):
    i: int


def noop(state: State) -> dict[str, Any]:
    return {"i": state["i"] + 1}


def build(saver: PostgresSaver) -> Any:
    graph = StateGraph(State)
    names = [f"s{i}" for i in range(STEPS)]
    for name in names:
        graph.add_node(name, noop)
    graph.add_edge(START, names[0])
    for a, b in zip(names, names[1:], strict=False):
        graph.add_edge(a, b)
    graph.add_edge(names[-1], END)
    return graph.compile(checkpointer=saver)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--database-url", required=True)
    args = parser.parse_args()
    pool = ConnectionPool(args.database_url, min_size=2, max_size=args.threads + 2, open=True,
                          kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row})
    saver = PostgresSaver(pool)
    saver.setup()
    app = build(saver)

    def once() -> None:
        out = app.invoke({"i": 0}, {"configurable": {"thread_id": str(uuid.uuid4())}}, durability="sync")
        assert out["i"] == STEPS, out

    for _ in range(3):
        once()
    per_step = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        once()
        per_step.append((time.perf_counter() - t0) / STEPS)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as executor:
        for future in [executor.submit(once) for _ in range(args.burst)]:
            future.result()
    throughput = args.burst * STEPS / (time.perf_counter() - t0)
    print(json.dumps({"per_step": per_step, "throughput": throughput}))
    pool.close()


if __name__ == "__main__":
    main()
