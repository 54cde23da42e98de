from runs.services import resume_run

from ._control import STATES_DOC, ControlCommand


class Command(ControlCommand):
    help = ("Resume a paused run -> running: the steps the pause held are published again. A run that is "
            "not paused is refused. " + STATES_DOC)
    verb = "resume"
    service = staticmethod(resume_run)
