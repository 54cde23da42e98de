"""Settings for the test suite: short leases and sweeps so recovery tests stay quick.

Values go into the environment (not only into settings) so that the worker and engine
subprocesses the tests start see exactly the same configuration.
"""

import os

_worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
os.environ.setdefault("STEVORA_LEASE_SECONDS", "2")
os.environ.setdefault("STEVORA_RECONCILE_SECONDS", "0.3")
os.environ.setdefault("STEVORA_REDISPATCH_SECONDS", "2")
os.environ.setdefault("STEVORA_SCHEDULE_SWEEP_SECONDS", "0.3")
os.environ.setdefault("STEVORA_HANDLER_MODULES", "tests.handlers,tests.llm_handlers,examples.handlers")
if _worker != "main" and "-main-" in os.environ.get("STEVORA_QUEUE", ""):
    # An xdist worker inherits the controller's queue name; each worker has its own
    # database and engine, so it needs its own queue too (engines it starts get this one).
    del os.environ["STEVORA_QUEUE"]
os.environ.setdefault("STEVORA_QUEUE", f"stevora-test-{_worker}-{os.getpid()}")
os.environ.setdefault("STEVORA_VAR_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), "var", "test"))
# PostgreSQL mode with DEBUG off refuses to start without a key; tests (and the workers
# they start) share this one. Not a published default, never used outside tests.
os.environ.setdefault("SECRET_KEY", "stevora-tests-only-" + "k3y" * 16)
os.environ.setdefault("STEVORA_SQLITE_TEST_PATH", os.path.join(os.environ["STEVORA_VAR_DIR"], "test.sqlite3"))

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
