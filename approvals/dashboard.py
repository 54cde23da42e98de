"""The admin dashboard's panel of the oldest waiting approvals (registered by approvals.apps)."""

from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from runs.cli import _fmt_seconds
from runs.dashboard import Panel

from .models import Approval, ApprovalStatus

SHOWN = 10


def oldest_waiting_panel(request: HttpRequest, now: datetime) -> Panel | None:
    if not request.user.has_perm("approvals.view_approval"):
        return None
    # approval_pending_idx: pending approvals by requested_at.
    waiting = list(Approval.objects.filter(status=ApprovalStatus.PENDING).order_by("requested_at", "id")[:SHOWN])
    if not waiting:
        return Panel("approvals", "Oldest waiting approvals",
                     format_html('<p id="oldest-approvals">{}</p>', "No approval is waiting."))
    rows = format_html_join("", '<tr data-approval="{}"><td><a href="{}">{} · {}</a></td><td>{}</td>'
                            '<td class="waited">{}</td></tr>',
                            ((a.pk, reverse("admin:approvals_approval_change", args=[a.pk]), a.workflow_name,
                              a.step_key, str(a.run_id)[:8],
                              _fmt_seconds(max(0.0, (now - a.requested_at).total_seconds())))
                             for a in waiting))
    return Panel("approvals", "Oldest waiting approvals", format_html(
        '<table id="oldest-approvals"><thead><tr><th>approval</th><th>run</th><th>waiting for</th></tr></thead>'
        '<tbody>{}</tbody></table>', rows))
