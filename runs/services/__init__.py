"""Run services: the one place where definitions are stored and runs change state.

Management commands, admin actions and API views call these functions and nothing
else; each owns its transaction and its checks, and raises a clear error instead of
half-writing anything. By job: ``definitions`` (loading), ``starting``, ``control``
(cancel, pause, resume), ``retry``, ``fork``, ``waiting`` (resuming a waiting step),
``retention`` (purging finished runs), ``diff`` (two runs compared).
"""

from runs.errors import NotFound, StartError

from .control import cancel_run, get_run, pause_run, resume_run
from .definitions import LoadResult, definition_files, load_workflow, load_workflow_text
from .diff import diff_runs, register_step_differ
from .fork import fork_run
from .retention import PurgeReport, purge_runs, register_purger
from .retry import retry_run
from .starting import MAX_BATCH, BatchItem, StartResult, check_batch, resolve_workflow, start_run, start_runs
from .waiting import requeue_waiting_step, resume_waiting_step

__all__ = [
    "MAX_BATCH", "BatchItem", "LoadResult", "NotFound", "PurgeReport", "StartError", "StartResult", "cancel_run",
    "check_batch", "definition_files", "diff_runs", "fork_run", "get_run", "load_workflow", "load_workflow_text",
    "pause_run", "purge_runs", "register_purger", "register_step_differ", "requeue_waiting_step",
    "resolve_workflow", "resume_run", "resume_waiting_step", "retry_run", "start_run", "start_runs",
]
