from runs.services import pause_run

from ._control import STATES_DOC, ControlCommand


class Command(ControlCommand):
    help = ("Pause a pending, running or waiting run -> paused. Running steps finish; the task/llm steps "
            "after them wait as ready until resume_run. Any other state is refused. " + STATES_DOC)
    verb = "pause"
    service = staticmethod(pause_run)
