"""Signals other apps hook into (webhooks, notifications). Sent after commit."""

from django.dispatch import Signal

# Sent with run_id and status whenever a run changes status (including at start).
run_status_changed = Signal()
