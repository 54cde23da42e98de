"""Run services: the one place where definitions are stored and runs change state.

Management commands, admin actions and API views call these functions and nothing
else; each owns its transaction and its checks, and raises a clear error instead of
half-writing anything. By job: ``definitions`` (loading), ``starting``, ``control``
(cancel, pause, resume), ``retry``, ``fork``, ``waiting`` (resuming a waiting step).
"""

from runs.errors import NotFound, StartError

from .control import cancel_run, get_run, pause_run, resume_run
from .definitions import LoadResult, definition_files, load_workflow, load_workflow_text
from .fork import fork_run
from .retry import retry_run
from .starting import MAX_BATCH, BatchItem, StartResult, check_batch, resolve_workflow, start_run, start_runs
from .waiting import resume_waiting_step

__all__ = [
    "MAX_BATCH", "BatchItem", "check_batch", "start_runs",
    "LoadResult", "NotFound", "StartError", "StartResult", "cancel_run", "definition_files", "fork_run", "get_run",
    "load_workflow", "load_workflow_text", "pause_run", "resolve_workflow", "resume_run", "resume_waiting_step",
    "retry_run", "start_run",
]
