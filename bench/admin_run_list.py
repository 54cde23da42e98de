"""Time the admin's run list (the observatory's first page) on a large runs table.

Usage (against a scratch PostgreSQL database full of runs; never a shared one):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stevora_bench .venv/bin/python bench/admin_run_list.py

Prints milliseconds per page for the plain list, each filter, and the searches, plus
the SQL count of rows, so a slow path shows up as a ratio against the plain list.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stevora_project.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.test import Client  # noqa: E402

from runs.models import Run  # noqa: E402


def timed(client: Client, url: str, params: dict[str, str], rounds: int = 5) -> float:
    client.get(url, params)  # warm caches
    start = time.perf_counter()
    for _ in range(rounds):
        response = client.get(url, params)
        assert response.status_code == 200, response.status_code
    return (time.perf_counter() - start) / rounds * 1000


def main() -> None:
    user, _ = User.objects.get_or_create(username="bench-admin", defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(user)
    url = "/admin/runs/run/"
    total = Run.objects.count()
    sample = Run.objects.order_by("created_at").values_list("pk", "idempotency_key", "workflow_name").first()
    assert sample is not None, "no runs to list"
    run_id, key, workflow = sample
    cases = {
        "plain list": {},
        "status=failed": {"status__exact": "failed"},
        f"workflow={workflow}": {"workflow": workflow},
        "created today": {"created_at__gte": time.strftime("%Y-%m-%d 00:00:00+00:00", time.gmtime())},
        "page 100": {"p": "100"},
        "search run id": {"q": str(run_id)},
        "search idempotency key": {"q": key or "none"},
    }
    base = None
    print(f"{total} runs")
    for name, params in cases.items():
        ms = timed(client, url, params)
        base = base or ms
        print(f"{name:<28} {ms:8.1f} ms/page  ({ms / base:.2f}x the plain list)")
    ms = timed(client, f"/admin/runs/run/{run_id}/change/", {})
    print(f"{'run page':<28} {ms:8.1f} ms")


if __name__ == "__main__":
    main()
