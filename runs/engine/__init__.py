"""The durable engine: the one place where a step's life is written.

Follow a step from its Celery message to its commit and you stay in this package:

- ``tasks``       the Celery tasks (a primary key in, nothing out)
- ``executor``    claim, execute outside any transaction, fenced commit (DESIGN §4)
- ``timeouts``    a step's deadline: the handler runs on a worker thread that is abandoned at the deadline
- ``heartbeat``   extends the leases of the steps a process holds, never past their deadline
- ``transitions`` what a recorded fact means for the run: the next step, failure, the run's status
- ``fanout``      parallel branches, map items, child runs and their joins
- ``starting``    inserting a run with its first step (top-level and child runs)
- ``effects``     what a transaction promises once it commits (history rows, doorbells, notices)
- ``hotpath``     PostgreSQL's one-statement versions of the common paths
- ``dispatch``    ringing the doorbell (publishing step ids after commit)
- ``recovery``    the reconciler's sweeps: expired leases, lost doorbells, due timers, orphaned child runs
- ``sweeper``     the loop that runs every registered sweep, outside the step queue
- ``workers``     the live-worker registry (which processes run, with which handlers)
- ``faults``      named fault points for crash tests

Everything that changes a run takes the run's row lock first (``transitions.lock_run``);
the lock order is written down in docs/operations.md.
"""
