"""API shapes of definitions, runs, steps and history (the same names as ``show_run --json``)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from runs.models import Run, RunEvent, RunStatus, Workflow
from runs.shapes import LLMCallSerializer, ToolCallSerializer
from steps.models import StepExecution, StepStatus

from .fields import (
    INT32_MAX,
    INT64_MAX,
    JSONObjectField,
    MoneyField,
    QuerySerializer,
    StrictCharField,
    StrictIntegerField,
)

JSON_ANY: dict[str, Any] = {}  # OpenAPI: any JSON value


class WorkflowSerializer(serializers.ModelSerializer):
    class Meta:
        model = Workflow
        fields = ["name", "version", "description", "content_hash", "created_at", "definition"]
        read_only_fields = fields


class WorkflowSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = Workflow
        fields = ["name", "version", "description", "content_hash", "created_at"]
        read_only_fields = fields


@extend_schema_field({"oneOf": [{"type": "object", "additionalProperties": True}, {"type": "string"}]})
class DefinitionField(serializers.JSONField):
    """The document as a JSON object, or its YAML/JSON text."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, (dict, str)):
            kind = "null" if data is None else type(data).__name__
            raise serializers.ValidationError(f"must be the workflow document (an object) or its YAML/JSON text, "
                                              f"got {kind}")
        return super().to_internal_value(data)  # type: ignore[arg-type]


class DefinitionCreateSerializer(serializers.Serializer):
    definition = DefinitionField(help_text="The workflow document (the same JSON/YAML structure `load_workflows` "
                                           "reads) or its text, validated against the published schema.")


class DefinitionFilterSerializer(QuerySerializer):
    name = serializers.CharField(required=False, max_length=200, help_text="Only the versions of this workflow.")


class DefinitionCreatedSerializer(WorkflowSerializer):
    created = serializers.BooleanField(help_text="false when the same content was stored already (same version).")

    class Meta(WorkflowSerializer.Meta):
        fields = [*WorkflowSerializer.Meta.fields, "created"]
        read_only_fields = fields


class StepSummarySerializer(serializers.ModelSerializer):
    attempts = serializers.IntegerField(source="attempt", help_text="Claims so far.")
    parent = serializers.SerializerMethodField()  # type: ignore[assignment]
    input = serializers.JSONField(allow_null=True)
    output = serializers.JSONField(allow_null=True)
    error = serializers.JSONField(allow_null=True)
    status = serializers.ChoiceField(choices=StepStatus.choices)
    cost_usd = serializers.DecimalField(max_digits=14, decimal_places=6, coerce_to_string=True)

    class Meta:
        model = StepExecution
        fields = ["id", "key", "name", "type", "status", "parent", "branch", "item_index", "visit", "attempts",
                  "failures", "max_attempts", "input", "output", "error", "wake_at", "created_at", "started_at",
                  "finished_at", "input_tokens", "output_tokens", "cost_usd"]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_parent(self, row: StepExecution) -> str | None:
        parents: dict[int, str] = self.context.get("keys_by_id", {})
        if row.parent_id is None:
            return None
        return parents.get(row.parent_id) or StepExecution.objects.filter(pk=row.parent_id).values_list(
            "key", flat=True).first()


class RunSerializer(serializers.ModelSerializer):
    workflow = serializers.CharField(source="workflow_name")
    version = serializers.IntegerField(source="workflow.version")
    status = serializers.ChoiceField(choices=RunStatus.choices)
    input = serializers.JSONField()
    output = serializers.JSONField(allow_null=True)
    error = serializers.JSONField(allow_null=True)
    parent_run = serializers.UUIDField(source="parent_run_id", allow_null=True)
    forked_from = serializers.UUIDField(source="forked_from_id", allow_null=True,
                                        help_text="The run this one was forked from (null: not a fork).")
    forked_from_step = serializers.CharField(allow_blank=True, help_text="The step a fork ran from (\"\": not a fork).")
    replay = serializers.CharField(allow_blank=True, help_text="A fork's replay mode: \"recorded\" (answers from the "
                                                               "source run's record where the request matches) "
                                                               "or \"\" (all live).")
    cost_usd = serializers.DecimalField(max_digits=14, decimal_places=6, coerce_to_string=True)
    max_cost_usd = serializers.DecimalField(max_digits=14, decimal_places=6, coerce_to_string=True, allow_null=True)

    class Meta:
        model = Run
        fields = ["id", "workflow", "version", "status", "input", "output", "error", "idempotency_key",
                  "parent_run", "forked_from", "forked_from_step", "replay",
                  "created_by", "created_at", "started_at", "finished_at", "updated_at",
                  "input_tokens", "output_tokens", "cost_usd", "max_cost_usd", "max_tokens", "priority"]
        read_only_fields = fields


class ForkSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    from_step = serializers.CharField(source="forked_from_step")
    status = serializers.ChoiceField(choices=RunStatus.choices)
    created_at = serializers.DateTimeField()


class RunDetailSerializer(RunSerializer):
    forks = serializers.SerializerMethodField()
    steps = serializers.SerializerMethodField()

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "forks", "steps"]
        read_only_fields = fields

    @extend_schema_field(ForkSummarySerializer(many=True))
    def get_forks(self, run: Run) -> list[dict[str, Any]]:
        rows = Run.objects.filter(forked_from_id=run.pk).order_by("created_at", "id")
        return ForkSummarySerializer(rows, many=True).data  # type: ignore[return-value]

    @extend_schema_field(StepSummarySerializer(many=True))
    def get_steps(self, run: Run) -> list[dict[str, Any]]:
        rows = list(StepExecution.objects.filter(run_id=run.pk).order_by("id"))
        keys = {row.pk: row.key for row in rows}
        return StepSummarySerializer(rows, many=True, context={**self.context, "keys_by_id": keys}).data  # type: ignore[return-value]


class RunStartSerializer(serializers.Serializer):
    workflow = StrictCharField(max_length=200, help_text="Workflow name (the latest version unless `version`).")
    version = StrictIntegerField(required=False, min_value=1, max_value=INT32_MAX)
    input = JSONObjectField(required=False, default=dict, help_text="The run input: a JSON object.")
    idempotency_key = StrictCharField(required=False, max_length=255, allow_blank=False,
                                      help_text="Or the `Idempotency-Key` header: the same key returns "
                                                "the same run (200 instead of 201).")
    max_cost_usd = MoneyField(required=False, help_text="Budget: the run fails once its LLM calls cost more.")
    max_tokens = StrictIntegerField(required=False, min_value=1, max_value=INT64_MAX,
                                    help_text="Budget: the run fails once its LLM calls use more tokens.")
    priority = StrictIntegerField(required=False, min_value=-100, max_value=100,
                                  help_text="Overrides the workflow's priority (default 0): higher first wherever "
                                            "work waits (a concurrency queue, the step queue).")


class BatchItemSerializer(serializers.Serializer):
    input = JSONObjectField(required=False, default=dict, help_text="This run's input: a JSON object.")
    idempotency_key = StrictCharField(required=False, max_length=255, allow_blank=False,
                                      help_text="The same key returns the same run (`created`: false).")


class RunBatchStartSerializer(serializers.Serializer):
    workflow = StrictCharField(max_length=200, help_text="Workflow name (the latest version unless `version`).")
    version = StrictIntegerField(required=False, min_value=1, max_value=INT32_MAX)
    items = serializers.ListField(child=BatchItemSerializer(), allow_empty=False, max_length=10_000,
                                  help_text="One per run, at most 10,000: every item is checked before any run "
                                            "starts.")
    max_cost_usd = MoneyField(required=False, help_text="Budget of each run.")
    max_tokens = StrictIntegerField(required=False, min_value=1, max_value=INT64_MAX,
                                    help_text="Budget of each run.")
    priority = StrictIntegerField(required=False, min_value=-100, max_value=100,
                                  help_text="Overrides the workflow's priority (default 0): higher first wherever "
                                            "work waits (a concurrency queue, the step queue).")


class BatchRunSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=RunStatus.choices)
    created = serializers.BooleanField(help_text="false: an existing run with this item's idempotency key.")


class BatchStartedSerializer(serializers.Serializer):
    created = serializers.IntegerField(help_text="How many runs this call started.")
    existing = serializers.IntegerField(help_text="How many items named an existing run by idempotency key.")
    runs = BatchRunSerializer(many=True, help_text="One per item, in the order of `items`.")


class RunFilterSerializer(QuerySerializer):
    status = serializers.ChoiceField(choices=RunStatus.choices, required=False)
    workflow = serializers.CharField(required=False, max_length=200)
    created_after = serializers.DateTimeField(required=False, help_text="ISO 8601; inclusive.")
    created_before = serializers.DateTimeField(required=False, help_text="ISO 8601; exclusive.")


class ControlSerializer(serializers.Serializer):
    reason = StrictCharField(required=False, allow_blank=True, max_length=2000,
                                   help_text="Cancel only: recorded in the run's error and history.")


class ForkSerializer(serializers.Serializer):
    from_step = StrictCharField(max_length=200, help_text="A top-level step the source run reached: "
                                                          "results of the steps before it are kept.")
    input = JSONObjectField(required=False, help_text="Changed run input (default: the source run's).")
    replay = serializers.ChoiceField(
        choices=["none", "recorded"], required=False, default="none",
        help_text="recorded: model turns and tool calls that ask what the source run asked are answered from its "
                  "record (no cost, no side effect); the first that differs goes live, and everything after it.")


class RunEventSerializer(serializers.ModelSerializer):
    data = serializers.JSONField()  # type: ignore[assignment]

    class Meta:
        model = RunEvent
        fields = ["id", "kind", "step_key", "actor", "message", "data", "created_at"]
        read_only_fields = fields


class AttemptSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(allow_null=True)
    outcome = serializers.ChoiceField(choices=["completed", "retry_scheduled", "failed", "recovered"])
    worker = serializers.CharField(allow_blank=True)
    started_at = serializers.CharField(allow_null=True)
    duration_ms = serializers.FloatField(allow_null=True)
    message = serializers.CharField(allow_blank=True)
    error = serializers.JSONField(allow_null=True)
    at = serializers.DateTimeField()


class StepDetailSerializer(StepSummarySerializer):
    attempt_history = AttemptSerializer(many=True, source="api_attempts")
    llm_calls = LLMCallSerializer(many=True, source="api_llm_calls")
    tool_calls = ToolCallSerializer(many=True, source="api_tool_calls")

    class Meta(StepSummarySerializer.Meta):
        fields = [*StepSummarySerializer.Meta.fields, "state", "recovery_count", "attempt_history", "llm_calls",
                  "tool_calls"]
        read_only_fields = fields


# --- diff of two runs (runs.services.diff; the view returns the service's dict as is) --------------


@extend_schema_field(JSON_ANY)
class AnyValueField(serializers.JSONField):
    pass


class DiffDifferenceSerializer(serializers.Serializer):
    field = serializers.CharField(help_text="status, input, output, error, workflow; conversation and tool_calls "
                                            "for llm steps")
    path = serializers.CharField(help_text="where inside the field, e.g. `text`, `items[2].name`, "
                                           "`round 2.answer.text`; empty: the whole field")
    a = AnyValueField(allow_null=True)
    b = AnyValueField(allow_null=True)
    only = serializers.ChoiceField(choices=["a", "b"], required=False,
                                   help_text="the key exists only in this run's value")


class DiffSideSerializer(serializers.Serializer):
    status = serializers.CharField()
    type = serializers.CharField()
    attempts = serializers.IntegerField()


class DiffStepSerializer(serializers.Serializer):
    key = serializers.CharField()
    outcome = serializers.ChoiceField(choices=["same", "differs", "only_a", "only_b"])
    a = DiffSideSerializer(allow_null=True)
    b = DiffSideSerializer(allow_null=True)
    differences = DiffDifferenceSerializer(many=True)


class DiffRunSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    workflow = serializers.CharField()
    version = serializers.IntegerField()
    status = serializers.CharField()
    forked_from = serializers.UUIDField(allow_null=True)
    forked_from_step = serializers.CharField(allow_null=True)


class DiffPartSerializer(serializers.Serializer):
    step = serializers.CharField()
    outcome = serializers.ChoiceField(choices=["differs", "only_a", "only_b"])
    differing = serializers.ListField(child=serializers.CharField(), help_text="the fields that differ at that step")


class RunDiffSerializer(serializers.Serializer):
    a = DiffRunSerializer()
    b = DiffRunSerializer()
    identical = serializers.BooleanField()
    run_differences = DiffDifferenceSerializer(many=True)
    first_difference = DiffPartSerializer(allow_null=True, help_text="the first step, in A's order, that "
                                                                     "differs or that only one run reached")
    steps = DiffStepSerializer(many=True)
