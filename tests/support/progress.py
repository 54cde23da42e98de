"""A pytest plugin that keeps a one-line status file of a test pass, for ``bin/test``.

``bin/test`` runs its passes side by side, each writing its pytest output to a log;
this plugin (``-p tests.support.progress``, active when ``STEVORA_TEST_PROGRESS`` names a
file) rewrites that file with ``done total failed`` after every test, then the ids of the
failed tests one per line, so the script can draw one live line for all passes and name a
failure as soon as it happens. Under xdist the controller sees every worker's
reports, so it alone writes.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

_PATH = os.environ.get("STEVORA_TEST_PROGRESS")
_state = {"done": 0, "total": 0}
_counted: set[str] = set()
_failed: set[str] = set()


def _write() -> None:
    if not _PATH or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    tmp = f"{_PATH}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{_state['done']} {_state['total']} {len(_failed)}\n")
        f.writelines(f"{nodeid}\n" for nodeid in sorted(_failed))
    os.replace(tmp, _PATH)


def pytest_collection_finish(session: pytest.Session) -> None:
    _state["total"] = len(session.items)
    _write()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    _state["total"] = max(_state["total"], len(ids))
    _write()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    failed = report.failed
    finished = report.when == "teardown" or failed or report.skipped
    if failed:
        _failed.add(report.nodeid)
    if finished and report.nodeid not in _counted:
        _counted.add(report.nodeid)
        _state["done"] += 1
    if failed or finished:
        _write()
