"""Benchmarks: scripts that print numbers and ratios, run as ``python -m bench.<name>``;
never timed tests (see bench/README.md)."""

import os

# The benchmarks run the production settings against throwaway databases, which insist on
# a SECRET_KEY once DATABASE_URL is set: give them one of their own (never used elsewhere).
os.environ.setdefault("SECRET_KEY", "stevora-bench-only-" + "b3nch" * 10)
