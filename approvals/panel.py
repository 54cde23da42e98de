"""What the run page draws under an approval step: its request(s) and the decision."""

from __future__ import annotations

from django.template.loader import render_to_string
from django.utils.safestring import SafeString

from steps.models import StepExecution

from .models import Approval


def render(step: StepExecution) -> SafeString:
    """Each approval the step asked for, linked to its review page (the template escapes every value)."""
    approvals = list(Approval.objects.filter(step_id=step.pk).order_by("id"))
    if not approvals:
        return SafeString("")
    return render_to_string("approvals/step_panel.html", {"approvals": approvals})
