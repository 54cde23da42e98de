from runs.services import retry_run

from ._control import STATES_DOC, ControlCommand


class Command(ControlCommand):
    help = ("Retry a failed run -> running, from the step that failed; completed steps are kept, not run "
            "again. A run that is not failed is refused (to run again from any step, see fork_run). "
            + STATES_DOC)
    verb = "retry"
    service = staticmethod(retry_run)
