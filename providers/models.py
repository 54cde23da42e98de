"""LLM providers: configuration, named chains, circuit-breaker state and the record of every call.

Keys are never stored: a provider row holds the *name* of the environment variable
(``api_key_env``; ``<NAME>_FILE`` also works) that holds its key.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

NAME_VALIDATOR = RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
                                "letters, digits, '_', '.' and '-' (starting with a letter or digit)")
ENV_NAME_VALIDATOR = RegexValidator(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$",
                                    "the NAME of an environment variable (not the key itself)")


SECRET_OPTION_NAMES = frozenset({"api_key", "apikey", "key", "token", "secret", "password", "authorization",
                                 "x-api-key", "api-key"})


class ProviderKind(models.TextChoices):
    OPENAI = "openai", "OpenAI Chat Completions"
    ANTHROPIC = "anthropic", "Anthropic Messages"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible server (Ollama, vLLM, Groq, Together...)"
    FAKE = "fake", "Fake (scripted answers, for tests and the offline demo)"


DEFAULT_BASE_URLS = {
    ProviderKind.OPENAI: "https://api.openai.com",
    ProviderKind.ANTHROPIC: "https://api.anthropic.com",
}


class Provider(models.Model):
    """One configured model endpoint: a kind (wire format), a model, a URL, a key's env var, prices."""

    name = models.CharField(max_length=100, unique=True, validators=[NAME_VALIDATOR])
    kind = models.CharField(max_length=32, choices=ProviderKind.choices)
    model = models.CharField(max_length=200, help_text="model id sent to the provider, e.g. gpt-4o-mini")
    base_url = models.CharField(
        max_length=500, blank=True, default="",
        help_text="empty: the vendor's public API; e.g. http://127.0.0.1:11434 for a local Ollama")
    api_key_env = models.CharField(
        max_length=200, blank=True, default="", validators=[ENV_NAME_VALIDATOR],
        help_text="NAME of the environment variable holding the key (or NAME_FILE); never the key")
    enabled = models.BooleanField(default=True)
    priority = models.IntegerField(default=100, help_text="lower first, when no chain names the order")
    timeout_seconds = models.FloatField(default=60.0, validators=[MinValueValidator(0.01)],
                                        help_text="read timeout of one HTTP attempt")
    connect_timeout_seconds = models.FloatField(default=5.0, validators=[MinValueValidator(0.01)])
    max_retries = models.PositiveIntegerField(default=2, help_text="transient failures retried on this provider")
    backoff_seconds = models.FloatField(default=0.5, validators=[MinValueValidator(0.0)])
    max_backoff_seconds = models.FloatField(default=20.0, validators=[MinValueValidator(0.0)])
    max_retry_after_seconds = models.FloatField(
        default=30.0, validators=[MinValueValidator(0.0)],
        help_text="a Retry-After longer than this moves on to the next provider instead of waiting")
    input_price_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0),
                                               help_text="USD per million input tokens")
    output_price_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0),
                                                help_text="USD per million output tokens")
    breaker_threshold = models.PositiveIntegerField(default=5, validators=[MinValueValidator(1)],
                                                    help_text="consecutive failures that open the circuit")
    breaker_cooldown_seconds = models.FloatField(default=30.0, validators=[MinValueValidator(0.0)])
    # Flow control shared by every worker (providers.limits): empty = no limit.
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="at most this many HTTP requests to this provider per window, across all workers")
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="at most this many tokens (input + output) per window, across all workers")
    rate_window_seconds = models.FloatField(
        default=60.0, validators=[MinValueValidator(0.1)],
        help_text="the sliding window the two limits count over (60: per minute)")
    # Kind-specific options: ``script`` for the fake kind, ``json_mode`` / ``max_tokens_field``
    # for OpenAI-compatible servers, ``anthropic_version``.
    options = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["priority", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind}:{self.model})"

    def clean(self) -> None:
        if self.kind in (ProviderKind.OPENAI_COMPATIBLE,) and not self.base_url:
            raise ValidationError({"base_url": "an OpenAI-compatible provider needs its server's base URL"})
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValidationError({"base_url": "must start with http:// or https://"})
        if not isinstance(self.options, dict):
            raise ValidationError({"options": "must be a JSON object"})
        secretish = sorted(k for k in self.options if k.lower() in SECRET_OPTION_NAMES)
        if secretish:
            raise ValidationError({"options": f"{', '.join(secretish)}: keys are never stored; put the key in an "
                                              "environment variable and name it in api_key_env"})

    @property
    def url_root(self) -> str:
        return (self.base_url or DEFAULT_BASE_URLS.get(ProviderKind(self.kind), "")).rstrip("/")

    def cost_of(self, input_tokens: int, output_tokens: int) -> Decimal:
        million = Decimal(1_000_000)
        cost = (Decimal(input_tokens) * self.input_price_per_mtok + Decimal(output_tokens)
                * self.output_price_per_mtok) / million
        return cost.quantize(Decimal("0.000001"))


class ProviderRateGrant(models.Model):
    """One request admitted by a provider's rate limit (providers.limits): the sliding window's log.

    Written before the HTTP request (with the estimated tokens) and corrected after it (the
    real usage); grants older than the provider's window are deleted by the next admission.
    """

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="rate_grants")
    granted_at = models.DateTimeField()
    tokens = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [
            # providers.limits.reserve: a provider's grants inside its window, oldest first.
            models.Index(fields=["provider", "granted_at"], name="rategrant_provider_at"),
        ]

    def __str__(self) -> str:
        return f"{self.provider_id} at {self.granted_at}: {self.tokens} tokens"


class ProviderChain(models.Model):
    """A named, ordered list of provider names, defined once and named by ``chain:`` in llm steps."""

    name = models.CharField(max_length=100, unique=True, validators=[NAME_VALIDATOR])
    providers = models.JSONField(default=list, help_text='ordered provider names, e.g. ["openai", "anthropic"]')
    description = models.TextField(blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name}: {' -> '.join(self.providers)}"

    def clean(self) -> None:
        if not isinstance(self.providers, list) or not self.providers or not all(
                isinstance(p, str) and p for p in self.providers):
            raise ValidationError({"providers": "must be a non-empty list of provider names"})
        missing = sorted(set(self.providers) - set(Provider.objects.filter(
            name__in=self.providers).values_list("name", flat=True)))
        if missing:
            raise ValidationError({"providers": f"no provider named {', '.join(missing)}"})


class BreakerState(models.TextChoices):
    """Circuit breaker of one provider, shared by all workers through this row::

        closed -> open          (breaker_threshold consecutive failures)
        open -> half_open       (cooling-off over: exactly one caller wins the probe)
        half_open -> closed     (the probe succeeded)
        half_open -> open       (the probe failed: cool off again)
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class ProviderHealth(models.Model):
    provider = models.OneToOneField(Provider, on_delete=models.CASCADE, primary_key=True, related_name="health")
    state = models.CharField(max_length=16, choices=BreakerState.choices, default=BreakerState.CLOSED)
    consecutive_failures = models.PositiveIntegerField(default=0)
    open_until = models.DateTimeField(null=True, blank=True)
    # The probe's holder must answer by then, or another caller may take the probe over.
    probe_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    changed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "provider health (circuit breaker)"
        verbose_name_plural = "provider health (circuit breakers)"

    def __str__(self) -> str:
        return f"{self.provider_id}: {self.state}"


class LLMCallStatus(models.TextChoices):
    """One HTTP attempt::

        started -> succeeded | failed
        started -> abandoned     (its worker died; a later attempt of the step found it)
        started -> superseded    (succeeded, but a concurrent attempt recorded this round first)
    """

    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABANDONED = "abandoned"
    SUPERSEDED = "superseded"


class LLMCall(models.Model):
    """One HTTP attempt to a provider, written before the request and completed after."""

    step = models.ForeignKey("steps.StepExecution", related_name="llm_calls", null=True, blank=True,
                             on_delete=models.CASCADE)
    run = models.ForeignKey("runs.Run", related_name="llm_calls", null=True, blank=True, on_delete=models.CASCADE)
    step_attempt = models.PositiveIntegerField(default=0, help_text="the step's attempt (claim) number")
    round = models.PositiveIntegerField(default=1, help_text="model turn within the step (agent loop round)")
    try_number = models.PositiveIntegerField(default=1, help_text="HTTP attempt on this provider in this round")
    provider = models.ForeignKey(Provider, related_name="calls", null=True, blank=True, on_delete=models.SET_NULL)
    provider_name = models.CharField(max_length=100)
    kind = models.CharField(max_length=32)
    model = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=LLMCallStatus.choices, default=LLMCallStatus.STARTED)
    # The request as sent (URL, redacted headers, body) and the response body as received.
    request = models.JSONField(default=dict)
    response = models.JSONField(null=True, blank=True)
    # The normalised answer (text, tool calls, usage): what a re-executed step replays.
    result = models.JSONField(null=True, blank=True)
    # SHA-256 of the conversation asked (messages, system, tools, format): a replay must match it.
    request_digest = models.CharField(max_length=64, blank=True, default="")
    http_status = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    error_kind = models.CharField(max_length=16, blank=True, default="", help_text="transient or permanent")
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal(0))
    latency_ms = models.FloatField(null=True, blank=True)
    # A replayed fork's answer copied from the source run's record (no request was sent, nothing charged).
    replayed_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="replays")
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # A round's answer is recorded once: a re-executed step replays it instead of paying again.
            models.UniqueConstraint(fields=["step", "round"], condition=Q(status="succeeded"),
                                    name="llmcall_one_answer_per_round"),
        ]
        indexes = [
            # providers.agent.Turns.replay: the recorded answer of (step, round).
            models.Index(fields=["step", "round"], name="llmcall_step_round"),
            # Admin list and per-run cost pages: a run's calls in order.
            models.Index(fields=["run", "id"], name="llmcall_run_id"),
        ]
        verbose_name = "LLM call"

    def __str__(self) -> str:
        return f"{self.provider_name}:{self.model} round {self.round} try {self.try_number} ({self.status})"


class ToolCallStatus(models.TextChoices):
    """One tool call::

        started -> completed | failed
        awaiting_approval -> started (approved, arguments maybe edited) | failed (rejected)
        started -> needs_decision   (its worker died inside an irreversible tool)
        needs_decision -> started (run it again) | completed (result recorded by hand) | failed (step failed)

    A ``started`` row a later attempt finds with ``executions > 0`` and no error was cut off
    in the middle: ``read_only`` and ``idempotent`` tools run again (same idempotency key),
    an ``irreversible`` one waits for a person (providers.tool_decisions).
    """

    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    AWAITING_APPROVAL = "awaiting_approval"
    NEEDS_DECISION = "needs_decision"


class ToolEffects(models.TextChoices):
    """What running a tool twice does to the world (drives what a crash mid-call allows)."""

    READ_ONLY = "read_only"
    IDEMPOTENT = "idempotent"
    IRREVERSIBLE = "irreversible"


class ToolCall(models.Model):
    """Checkpoint of one tool call of an agent loop: a re-executed step replays a completed one."""

    step = models.ForeignKey("steps.StepExecution", related_name="tool_calls", on_delete=models.CASCADE)
    round = models.PositiveIntegerField()
    call_id = models.CharField(max_length=200)
    tool = models.CharField(max_length=100)
    handler = models.CharField(max_length=200)
    arguments = models.JSONField(default=dict)
    status = models.CharField(max_length=24, choices=ToolCallStatus.choices, default=ToolCallStatus.STARTED)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    step_attempt = models.PositiveIntegerField(default=0)
    executions = models.PositiveIntegerField(default=1, help_text="times the handler was entered")
    idempotency_key = models.CharField(max_length=400)
    effects = models.CharField(max_length=16, choices=ToolEffects.choices, default=ToolEffects.IRREVERSIBLE)
    # Each decision a person took about this call, in order: {"kind": "arguments" | "crash",
    # "action", "by", "at", "approval", ...}. The approval rows hold the rest.
    decisions = models.JSONField(default=list, blank=True)
    # A replayed fork's result copied from the source run's record (the handler was not entered).
    replayed_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="replays")
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["step", "round", "call_id"], name="toolcall_unique_per_round"),
        ]

    def __str__(self) -> str:
        return f"{self.tool} round {self.round} ({self.status})"

    def as_output(self) -> dict[str, Any]:
        return {"round": self.round, "id": self.call_id, "name": self.tool, "arguments": self.arguments,
                "status": self.status, "output": self.output, **({"error": self.error} if self.error else {}),
                **({"decisions": self.decisions} if self.decisions else {}),
                **({"replayed": True} if self.replayed_from_id else {})}
