"""Signals of the approvals app.

``approval_requested(approval_id, webhook_url)`` is sent after the transaction that
created the approval commits. ``webhook_url`` is the step's ``webhook`` (rendered) or
``settings.STEVORA["APPROVAL_WEBHOOK_URL"]``, or "" when neither is set; the webhook
delivery (signed notices, retries) connects to it.
"""

from django.dispatch import Signal

approval_requested = Signal()
