from runs.services import retry_run

from ._control import ControlCommand


class Command(ControlCommand):
    help = "Retry a run (see DESIGN §3 for which states allow it)."
    verb = "retry"
    service = staticmethod(retry_run)
