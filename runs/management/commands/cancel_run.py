from runs.services import cancel_run

from ._control import ControlCommand


class Command(ControlCommand):
    help = "Cancel a run (see DESIGN §3 for which states allow it)."
    verb = "cancel"
    service = staticmethod(cancel_run)
