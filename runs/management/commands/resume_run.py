from runs.services import resume_run

from ._control import ControlCommand


class Command(ControlCommand):
    help = "Resume a run (see DESIGN §3 for which states allow it)."
    verb = "resume"
    service = staticmethod(resume_run)
