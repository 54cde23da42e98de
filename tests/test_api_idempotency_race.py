"""Two (or eight) racing starts with the same Idempotency-Key create exactly one run."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from runs.models import Run
from runs.services import load_workflow
from tests.api_support import SERVICE_PERMS, client_for, make_user, three_steps

RACERS = 8


def test_racing_starts_with_one_key_make_one_run_over_a_live_server(live_server: Any) -> None:
    load_workflow(three_steps())
    key: str = client_for(make_user("svc", SERVICE_PERMS)).plaintext  # type: ignore[attr-defined]
    barrier = threading.Barrier(RACERS)
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def start() -> None:
        with httpx.Client(base_url=live_server.url, timeout=30) as http:
            barrier.wait()
            response = http.post("/api/v1/runs/", json={"workflow": "api-three", "input": {"topic": "x"}},
                                 headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "race-1"})
        with lock:
            answers.append((response.status_code, response.json().get("id", response.text)))

    threads = [threading.Thread(target=start) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(code for code, _ in answers)
    assert codes == [200] * (RACERS - 1) + [201], answers
    assert len({run_id for _, run_id in answers}) == 1
    assert Run.objects.filter(idempotency_key="race-1").count() == 1
    assert Run.objects.get().steps.filter(name="a").count() == 1  # one first step, not one per racer
