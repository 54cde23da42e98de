from runs.services import pause_run

from ._control import ControlCommand


class Command(ControlCommand):
    help = "Pause a run (see DESIGN §3 for which states allow it)."
    verb = "pause"
    service = staticmethod(pause_run)
