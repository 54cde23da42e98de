"""The chaos run's CI profile (bench/chaos.py, issue 9) meets its targets.

``python -m bench.chaos --profile ci`` creates its own PostgreSQL cluster and Redis
server, runs 20 runs through worker SIGKILLs, a Redis restart with every message lost
and a PostgreSQL restart, and exits 0 only when every run completed, no committed step
ran again, no step completed twice, every join fired once and the re-run delay's p90
stayed within the lease + 5 s. This test runs it as a user would and shows its table.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.conftest import EMBEDDED
from tests.support.procs import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(EMBEDDED, reason="the chaos run restarts a PostgreSQL server and a Redis server of its own "
                                        "under Celery workers: the embedded mode (SQLite, in-process broker) has "
                                        "neither server to restart"),
]


def test_the_ci_chaos_profile_completes_every_run_with_no_step_run_past_its_commit() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "bench.chaos", "--profile", "ci"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the script then removes its PostgreSQL cluster, Redis and workers.
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"the chaos run did not end within 240 s:\n{out}\n{err[-4000:]}")
    print(out)
    # Safety targets must hold every time; the re-run delay p90 (lease + 5 s) is reported, not
    # asserted here: on a loaded 2-core CI machine it measures the machine (docs/benchmarks.md).
    assert proc.returncode in (0, 1), f"chaos run exited {proc.returncode}:\n{out}\n{err[-4000:]}"
    for row in ("runs completed / total", "committed steps executed again", "steps completed twice",
                "joins fired != 1"):
        [line] = [line for line in out.splitlines() if line.startswith(row)]
        assert line.rstrip().endswith("yes"), f"{row} missed its target:\n{out}"
