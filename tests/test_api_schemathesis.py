"""Schemathesis against /api/schema/ on a live server: no 5xx, no response that breaks the schema.

A bounded number of generated examples per operation (SCHEMATHESIS_EXAMPLES, default
20) keeps this well under two minutes in CI. The key has every permission, and a
workflow, a run and a pending approval exist, so generated requests reach real
code paths, not only 404s.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import User
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.services import create_key
from runs.services import load_workflow, start_run
from tests.api_support import approval_first, three_steps

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "20"))


@pytest.fixture
def auth(live_server: Any) -> dict[str, str]:
    user = User.objects.create_superuser("fuzz", password="fuzz-pass-123")
    load_workflow(three_steps())
    load_workflow(approval_first())
    start_run("api-three", {"topic": "x"})
    start_run("api-approval", {"topic": "y"})
    key = create_key(name="schemathesis", user=user, rate="100000/min")
    return {"Authorization": f"Bearer {key.plaintext}"}


CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


def test_the_api_honours_its_schema(live_server: Any, auth: dict[str, str]) -> None:
    # The schema as served (public, no key), then every operation in it, a bounded number of cases each.
    # (The Python API rather than schemathesis' pytest plugin, whose lazy fixtures break on pytest 9.)
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def check(case: Any) -> None:
            case.call_and_validate(base_url=live_server.url, headers=auth, checks=CHECKS)

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report all
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert operations >= 15
    assert not failures, "\n\n".join(failures)
