from runs.services import cancel_run

from ._control import STATES_DOC, ControlCommand


class Command(ControlCommand):
    help = ("Cancel an unfinished run (pending, running, waiting or paused) -> cancelled. Waiting approvals "
            "and events are cancelled, child runs too; a step still running finishes and its result is "
            "discarded. A completed, failed or cancelled run is refused. " + STATES_DOC)
    verb = "cancel"
    service = staticmethod(cancel_run)
