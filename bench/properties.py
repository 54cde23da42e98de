"""The engine's property test, long profile: many more random workflows and faults than CI runs.

``tests/test_engine_properties.py`` checks random workflows (sequence, branch, loop with
``max_visits``, map, parallel, child workflow, wait, retry) under random faults (an abort
at each fault point, duplicate and lost messages, lease expiry, cancel/pause/resume/retry
at random moments) against a reference model. CI runs its ``ci`` profile (30 examples,
derandomized). This script runs the ``long`` profile (400 examples of up to 60 steps by
default, a fresh random seed each time, shrinking on) and prints what it ran:

    .venv/bin/python -m bench.properties                   # embedded (SQLite)
    .venv/bin/python -m bench.properties --examples 2000 --database-url postgres://postgres@127.0.0.1:5432/stevora_props

A failure prints the shrunk counterexample and a blob to reproduce it
(``@reproduce_failure``); the exit status is pytest's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=400, help="random workflows to try [400]")
    parser.add_argument("--database-url", default="",
                        help="PostgreSQL to run on (default: the embedded SQLite in a temporary folder)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    args = parser.parse_args(argv)

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(HYPOTHESIS_PROFILE="long", STEVORA_PROPERTY_EXAMPLES=str(args.examples),
               DJANGO_SETTINGS_MODULE="stevora_project.settings_test",
               STEVORA_VAR_DIR=tempfile.mkdtemp(prefix="stevora-properties-"))
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    argv_ = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q",
             "tests/test_engine_properties.py", "--hypothesis-show-statistics"]
    if args.seed is not None:
        argv_.append(f"--hypothesis-seed={args.seed}")
    print(f"property test, long profile: {args.examples} examples on "
          f"{'PostgreSQL' if args.database_url else 'SQLite (embedded)'}", flush=True)
    started = time.monotonic()
    done = subprocess.run(argv_, cwd=ROOT, env=env)
    took = time.monotonic() - started
    print(f"{'passed' if done.returncode == 0 else 'FAILED'} in {took:.0f} s "
          f"({took / max(args.examples, 1):.2f} s per example)")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
