"""The JSON shapes of a step's LLM and tool calls, shared by ``show_run --json`` and the API.

The rows are the providers app's (``LLMCall``, ``ToolCall``), reached through the step's
reverse relations; these serializers read attributes only, so ``runs`` imports nothing
of ``providers``.
"""

from __future__ import annotations

from rest_framework import serializers


class LLMCallSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    provider = serializers.CharField(source="provider_name")
    model = serializers.CharField()
    kind = serializers.CharField()
    status = serializers.CharField()
    step_attempt = serializers.IntegerField()
    round = serializers.IntegerField()
    try_number = serializers.IntegerField()
    http_status = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=14, decimal_places=6, coerce_to_string=True)
    latency_ms = serializers.FloatField(allow_null=True)
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class ToolCallSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    round = serializers.IntegerField(help_text="The model turn that asked for this call.")
    call_id = serializers.CharField(help_text="The id the model gave the call.")
    tool = serializers.CharField()
    handler = serializers.CharField(allow_blank=True)
    arguments = serializers.JSONField()
    status = serializers.CharField(help_text="started, completed, failed, awaiting_approval (a requires_approval "
                                             "tool waiting for its decision) or needs_decision (an irreversible "
                                             "call cut off by a crash).")
    output = serializers.JSONField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    executions = serializers.IntegerField(help_text="How many times the handler was entered (more than 1: a "
                                                    "worker died or the step retried while the tool ran).")
    step_attempt = serializers.IntegerField(help_text="The step attempt that last ran it.")
    idempotency_key = serializers.CharField()
    effects = serializers.CharField(help_text="read_only, idempotent or irreversible, as the tool declared it.")
    decisions = serializers.JSONField(help_text="What people decided about this call, in order.")
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
