"""The fallback chain: each provider in order, transient failures retried with backoff, a
circuit breaker per provider, every HTTP attempt on the record, tokens and cost rolled up.

Per provider: no key -> next; circuit open -> next (no request, no timeout waited); then
up to ``1 + max_retries`` HTTP attempts with exponential backoff and jitter (``backoff``),
honouring ``Retry-After``; a permanent failure (400/401/403/404) moves on at once.

A provider with ``requests_per_minute`` / ``tokens_per_minute`` admits each HTTP attempt
through ``providers.limits`` first. Over the limit, the step's ``on_rate_limit`` decides:
``fallback`` (the default) moves on to the next provider at once, and waits only when every
provider of the chain is held back; ``wait`` waits for this provider. A wait of at most
``STEVORA_LLM_RATE_WAIT_SECONDS`` is slept in the worker; a longer one raises ``RateLimitWait``
(the step is handed back until the window opens). Each wait or skip is a ``llm_rate_limited``
row in the run's history and a ``rate_limited`` entry in the step's ``route``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import backoff
import httpx
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from runs.models import Run, RunEvent
from steps.handlers import PermanentError, RetryableError
from steps.models import StepExecution

from . import breaker, fake, limits
from .models import BreakerState, LLMCall, LLMCallStatus, Provider, ProviderHealth, ProviderKind
from .registry import Route, StaleProvider, api_key, confirmed, fresh
from .wire import ChatRequest, ChatResult, HttpRequest, ProviderError, SSEParser, classify_status, client_for

logger = logging.getLogger("stevora.providers")


class BudgetExceeded(PermanentError):
    """The run's ``max_cost_usd`` / ``max_tokens`` budget is spent."""


class AllProvidersFailed(RetryableError):
    """Every provider of the chain failed; ``details`` lists each one's reason."""


class AllProvidersRefused(PermanentError):
    """Every provider failed permanently (bad request, bad key, unknown model)."""


class RateLimitWait(RetryableError):
    """The providers that may answer are held back by their rate limits for longer than a worker
    waits: try again after ``retry_after`` seconds (the llm step hands itself back)."""


class RateLimited(ProviderError):
    """This provider's rate limit holds the request back for ``wait_seconds``."""

    def __init__(self, provider: Provider, admission: limits.Admission) -> None:
        super().__init__(f"rate limited: {admission.reason}; the window opens in {admission.wait_seconds:.2f}s",
                         permanent=False, counts_for_breaker=False)
        self.provider_name = provider.name
        self.wait_seconds = admission.wait_seconds


RATE_LIMIT_MODES = ("fallback", "wait")


def rate_wait_seconds() -> float:
    return float(settings.STEVORA["LLM_RATE_WAIT_SECONDS"])


@dataclass
class Scope:
    """Where calls are recorded and charged: a step execution of a run (or nothing, in scripts)."""

    step_id: int | None = None
    run_id: Any = None
    step_attempt: int = 0
    secrets: list[str] = field(default_factory=list)
    # Budgets are fixed when a run starts: a run without one skips the budget queries.
    budgeted: bool = True
    # A step's first claim: no other attempt can have recorded an answer for any round.
    first_attempt: bool = False
    # What this scope's calls cost so far (this process only; a re-executed step adds the rows).
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    # Digest of the request of the round being asked (stored on its calls, checked on replay).
    request_digest: str = ""
    # ``stream: true``: ask for Server-Sent Events and send the text to ``live`` as it comes
    # (``live(call_id, provider, round, kind, text)``; kind ``text`` or ``discard``).
    stream: bool = False
    live: Callable[[int, str, int, str, str], None] | None = None
    # The step's key (for history rows) and what it does when a provider's rate limit holds it back.
    step_key: str = ""
    on_rate_limit: str = "fallback"


@dataclass
class Answer:
    result: ChatResult
    provider: str
    model: str
    route: list[dict[str, Any]]
    replayed: bool = False


# --- HTTP ---------------------------------------------------------------------------------

_clients: dict[tuple[int, int], httpx.Client] = {}
_clients_lock = threading.Lock()


def http_client() -> httpx.Client:
    """One pooled client per process and thread (prefork children get their own after fork)."""
    key = (os.getpid(), threading.get_ident())
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.setdefault(key, httpx.Client(follow_redirects=False, trust_env=False))
    return client


def scrub(value: Any, secrets: list[str]) -> Any:
    """Remove every occurrence of a key from something about to be stored or logged."""
    if not secrets:
        return value
    text = json.dumps(value) if not isinstance(value, str) else value
    changed = text
    for secret in secrets:
        if secret and len(secret) >= 4:
            changed = changed.replace(secret, "[redacted]")
    if changed == text:
        return value
    return changed if isinstance(value, str) else json.loads(changed)


def _send(provider: Provider, http: HttpRequest) -> tuple[int, Any, Any]:
    timeout = httpx.Timeout(provider.timeout_seconds, connect=provider.connect_timeout_seconds)
    try:
        response = http_client().post(http.url, headers=http.headers, json=http.body, timeout=timeout)
    except httpx.TimeoutException as exc:
        raise ProviderError(f"timeout after {provider.timeout_seconds}s ({type(exc).__name__})",
                            permanent=False) from None
    except httpx.HTTPError as exc:
        raise ProviderError(f"connection error: {type(exc).__name__}: {exc}", permanent=False) from None
    try:
        body: Any = response.json()
    except ValueError:
        body = {"non_json_body": response.text[:2000]}
        if response.status_code < 400:
            raise ProviderError(f"malformed response: HTTP {response.status_code} body is not JSON",
                                permanent=False, status=response.status_code, body=body) from None
    return response.status_code, response.headers, body


class _LiveText:
    """Coalesces a stream's text into pieces for watchers (at most ~20 writes a second): a piece
    arriving within 50 ms of the last write waits for the next piece or the end of the stream."""

    def __init__(self, scope: Scope, call_id: int, provider: str, round_number: int) -> None:
        self.scope, self.call_id, self.provider, self.round = scope, call_id, provider, round_number
        self.pending: list[str] = []
        self.last = 0.0  # the first piece goes out at once
        self.sent = False

    def __call__(self, text: str) -> None:
        self.pending.append(text)
        if time.monotonic() - self.last >= 0.05 or sum(map(len, self.pending)) >= 512:
            self.flush()

    def flush(self) -> None:
        if self.pending and self.scope.live is not None:
            self.scope.live(self.call_id, self.provider, self.round, "text", "".join(self.pending))
            self.sent = True
        self.pending = []
        self.last = time.monotonic()

    def discard(self) -> None:
        """The attempt failed after some text went out: tell watchers to drop it."""
        self.pending = []
        if self.sent and self.scope.live is not None:
            self.scope.live(self.call_id, self.provider, self.round, "discard", "")


def _send_stream(provider: Provider, http: HttpRequest, on_text: Callable[[str], None]) -> tuple[int, Any, Any]:
    """POST asking for Server-Sent Events; assemble the body a non-streamed request would have got.
    An error status answers with a JSON body as usual; a stream that is cut, or carries a chunk
    that is not JSON, raises a transient ProviderError."""
    client = client_for(provider.kind)
    timeout = httpx.Timeout(provider.timeout_seconds, connect=provider.connect_timeout_seconds)
    try:
        with http_client().stream("POST", http.url, headers=http.headers, json=http.body,
                                  timeout=timeout) as response:
            is_sse = response.headers.get("content-type", "").startswith("text/event-stream")
            if response.status_code >= 400 or not is_sse:
                response.read()
                try:
                    body: Any = response.json()
                except ValueError:
                    body = {"non_json_body": response.text[:2000]}
                    if response.status_code < 400:
                        raise ProviderError(f"malformed response: HTTP {response.status_code} body is neither "
                                            "an event stream nor JSON", permanent=False,
                                            status=response.status_code, body=body) from None
                return response.status_code, response.headers, body
            assembler = client.assembler()
            parser = SSEParser()
            for line in response.iter_lines():
                event = parser.feed(line)
                if event is not None:
                    text = assembler.feed(*event)
                    if text:
                        on_text(text)
                    if assembler.done:
                        break
            else:
                event = parser.feed("")  # a last event without its blank line
                if event is not None:
                    text = assembler.feed(*event)
                    if text:
                        on_text(text)
            return response.status_code, response.headers, assembler.body()
    except httpx.TimeoutException as exc:
        raise ProviderError(f"timeout after {provider.timeout_seconds}s ({type(exc).__name__})",
                            permanent=False) from None
    except httpx.HTTPError as exc:
        raise ProviderError(f"connection error: {type(exc).__name__}: {exc}", permanent=False) from None


def _fake_stream(provider: Provider, result: ChatResult, on_text: Callable[[str], None]) -> None:
    """The fake kind streams its scripted text word by word (``options.stream_delay_seconds`` apart)."""
    delay = float(provider.options.get("stream_delay_seconds") or 0)
    words = result.text.split(" ")
    for i, word in enumerate(words):
        on_text(word if i == len(words) - 1 else word + " ")
        if delay:
            time.sleep(delay)


# --- records ------------------------------------------------------------------------------


@contextlib.contextmanager
def _evidence_only() -> Iterator[None]:
    """A transaction whose commit need not wait for the disk (PostgreSQL ``synchronous_commit
    off``): the *started* and *failed* rows are evidence, and losing the last few hundred
    milliseconds of them to a database crash costs nothing — that crash breaks the worker's
    connection too, so no completion can follow a lost start. The answer's row, which is the
    replay checkpoint and carries the money, is committed durably. Saves one fsync per call."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        yield


def _table(model: Any) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _run_key(run_id: Any) -> Any:
    """A run's primary key as a parameter (a UUID is text on SQLite)."""
    pk = Run._meta.pk
    return run_id if run_id is None or pk is None else pk.get_db_prep_value(run_id, connection)


def _json(value: Any) -> Any:
    """A JSON column's parameter as the ORM would write it (``None``: SQL NULL)."""
    return None if value is None else connection.ops.adapt_json_value(value, None)


_START_COLUMNS = ("step_id", "run_id", "step_attempt", "round", "try_number", "provider_id", "provider_name", "kind",
                  "model", "status", "request", "request_digest", "error", "error_kind", "input_tokens",
                  "output_tokens", "cost_usd", "started_at")


@functools.cache
def _start_sql(vendor: str) -> str:
    """One statement, one round trip: the *started* row, inserted only if the caller's copy of
    the provider row is current (same ``updated_at``, still enabled) — else nothing is inserted
    and the chain reads the row again (``StaleProvider``). On PostgreSQL the statement is its own
    transaction and commits with ``synchronous_commit off`` (see ``_evidence_only``): set for
    this transaction only, by ``set_config(…, true)`` in the statement itself."""
    values = ", ".join(["%s"] * len(_START_COLUMNS))
    evidence_only = (" CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) AS evidence_only"
                     if vendor == "postgresql" else "")
    provider = _table(Provider)
    return (f"INSERT INTO {_table(LLMCall)} ({', '.join(_START_COLUMNS)}) SELECT {values} FROM {provider}"
            f"{evidence_only} WHERE {provider}.id = %s AND {provider}.updated_at = %s AND {provider}.enabled "
            "RETURNING id")


def _start_record(scope: Scope, provider: Provider, model: str, round_number: int, try_number: int,
                  request: dict[str, Any]) -> int:
    """The *started* row (evidence that a request may have gone out); returns its id."""
    ops = connection.ops
    payload = _json(scrub(request, scope.secrets))
    params = [scope.step_id, _run_key(scope.run_id), scope.step_attempt, round_number, try_number, provider.pk,
              provider.name, provider.kind, model, LLMCallStatus.STARTED, payload, scope.request_digest, "", "",
              0, 0, "0", ops.adapt_datetimefield_value(timezone.now()),
              # the guard: the copy of the provider row is current
              provider.pk, ops.adapt_datetimefield_value(provider.updated_at)]
    with connection.cursor() as cursor:
        cursor.execute(_start_sql(connection.vendor), params)
        row = cursor.fetchone()
    if row is None:
        raise StaleProvider(provider)
    confirmed(provider)
    return int(row[0])


def _fail_record(call_id: int, err: ProviderError, scope: Scope, started: float) -> None:
    with _evidence_only():
        LLMCall.objects.filter(pk=call_id, status=LLMCallStatus.STARTED).update(
            status=LLMCallStatus.FAILED, error=scrub(str(err), scope.secrets), error_kind=err.kind,
            http_status=err.status, response=scrub(err.body, scope.secrets) if err.body is not None else None,
            latency_ms=round((time.perf_counter() - started) * 1000, 3), finished_at=timezone.now())


@dataclass
class Completed:
    cost: Decimal
    canonical: bool
    # The run's totals and budget after this call's roll-up, when the statement returned them.
    run_totals: dict[str, Any] | None = None


@functools.cache
def _complete_sql(roll_up: bool, run: bool, step: bool) -> str:
    """PostgreSQL: the answer's row, its roll-ups to the run and the step, and the breaker's reset,
    as one statement — its own transaction, committed durably (the only fsync of a call).

    The roll-ups read the row count of the answer's UPDATE (``FROM answered``): nothing is
    charged unless this statement moved the row out of ``started``, so usage is rolled up
    exactly once. The step's UPDATE reads the run's (``FROM charged``): the run row is locked
    before the step row, the order the engine takes them in (no deadlock with a cancel)."""
    call, health = _table(LLMCall), _table(ProviderHealth)
    parts = [f"answered AS (UPDATE {call} SET status = %s, response = %s, result = %s, http_status = %s, "
             "input_tokens = %s, output_tokens = %s, cost_usd = %s, latency_ms = %s, finished_at = %s "
             f"WHERE id = %s AND status = '{LLMCallStatus.STARTED}' RETURNING id)",
             f"healthy AS (UPDATE {health} SET state = '{BreakerState.CLOSED}', consecutive_failures = 0, "
             "open_until = NULL, probe_until = NULL, changed_at = %s FROM answered "
             f"WHERE {health}.provider_id = %s AND {breaker.RESET_WHERE} RETURNING 1)"]
    totals = "NULL, NULL, NULL, NULL, NULL"
    source = "answered"
    usage = ("input_tokens = {t}.input_tokens + %s, output_tokens = {t}.output_tokens + %s, "
             "cost_usd = {t}.cost_usd + %s")
    if roll_up and run:
        table = _table(Run)
        parts.append(f"charged AS (UPDATE {table} SET {usage.format(t=table)} FROM answered WHERE {table}.id = %s "
                     f"RETURNING {table}.input_tokens, {table}.output_tokens, {table}.cost_usd, {table}.max_tokens, "
                     f"{table}.max_cost_usd)")
        totals = "charged.input_tokens, charged.output_tokens, charged.cost_usd, charged.max_tokens, " \
                 "charged.max_cost_usd"
        source = "charged"
    if roll_up and step:
        table = _table(StepExecution)
        parts.append(f"stepped AS (UPDATE {table} SET {usage.format(t=table)} FROM {source} "
                     f"WHERE {table}.id = %s RETURNING 1)")
    joined = " LEFT JOIN charged ON TRUE" if roll_up and run else ""
    return (f"WITH {', '.join(parts)} SELECT (SELECT count(*) FROM answered), {totals} "
            f"FROM (SELECT 1) AS one{joined}")


def _complete_postgresql(call_id: int, provider: Provider, status: str, fields: dict[str, Any], scope: Scope,
                         roll_up: bool) -> tuple[int, dict[str, Any] | None]:
    ops = connection.ops
    now = ops.adapt_datetimefield_value(timezone.now())
    params: list[Any] = [
        status, _json(fields["response"]), _json(fields["result"]), fields["http_status"],
        fields["input_tokens"], fields["output_tokens"], fields["cost_usd"], fields["latency_ms"],
        ops.adapt_datetimefield_value(fields["finished_at"]), call_id, now, provider.pk]
    run, step = scope.run_id is not None, scope.step_id is not None
    usage = [fields["input_tokens"], fields["output_tokens"], fields["cost_usd"]]
    if roll_up and run:
        params += [*usage, _run_key(scope.run_id)]
    if roll_up and step:
        params += [*usage, scope.step_id]
    with connection.cursor() as cursor:
        cursor.execute(_complete_sql(roll_up, run, step), params)
        row = cursor.fetchone()
    updated = int(row[0])
    totals = None
    if row[1] is not None:
        totals = dict(zip(("input_tokens", "output_tokens", "cost_usd", "max_tokens", "max_cost_usd"), row[1:],
                          strict=True))
    return updated, totals


def _complete_portable(call_id: int, provider: Provider, status: str, fields: dict[str, Any], scope: Scope,
                       roll_up: bool) -> int:
    """SQLite: the same writes as ``_complete_postgresql``, as statements of one transaction."""
    with transaction.atomic():
        updated = LLMCall.objects.filter(pk=call_id, status=LLMCallStatus.STARTED).update(status=status, **fields)
        if updated == 1:
            ProviderHealth.objects.filter(pk=provider.pk).filter(
                ~Q(state=BreakerState.CLOSED) | Q(consecutive_failures__gt=0)).update(
                state=BreakerState.CLOSED, consecutive_failures=0, open_until=None, probe_until=None,
                changed_at=timezone.now())
        if updated == 1 and roll_up:
            usage = dict(input_tokens=F("input_tokens") + fields["input_tokens"],
                         output_tokens=F("output_tokens") + fields["output_tokens"],
                         cost_usd=F("cost_usd") + fields["cost_usd"])
            # The run row first: the engine locks the run before its steps, and so do we.
            if scope.run_id is not None:
                Run.objects.filter(pk=scope.run_id).update(**usage)
            if scope.step_id is not None:
                StepExecution.objects.filter(pk=scope.step_id).update(**usage)
    return updated


def _complete_record(call_id: int, provider: Provider, result: ChatResult, body: Any, status: int | None,
                     scope: Scope, started: float) -> Completed:
    """Complete the row, charge its usage once (guarded on ``started``) and close the provider's
    circuit if a failure was counted — one durable commit."""
    cost = provider.cost_of(result.input_tokens, result.output_tokens)
    fields = dict(
        response=scrub(body, scope.secrets), result=result.to_json(), http_status=status,
        input_tokens=result.input_tokens, output_tokens=result.output_tokens, cost_usd=cost,
        latency_ms=round((time.perf_counter() - started) * 1000, 3), finished_at=timezone.now(),
    )
    roll_up = bool(result.input_tokens or result.output_tokens or cost)

    def write(outcome: str) -> tuple[int, dict[str, Any] | None]:
        if connection.vendor == "postgresql":
            return _complete_postgresql(call_id, provider, outcome, fields, scope, roll_up)
        return _complete_portable(call_id, provider, outcome, fields, scope, roll_up), None

    canonical = True
    if scope.first_attempt:
        # No other attempt can have answered this round: a unique violation here is a bug.
        updated, totals = write(LLMCallStatus.SUCCEEDED)
    else:
        try:
            with transaction.atomic():
                updated, totals = write(LLMCallStatus.SUCCEEDED)
        except IntegrityError:
            # A concurrent attempt of this step recorded this round's answer first; ours was paid for too.
            canonical = False
            updated, totals = write(LLMCallStatus.SUPERSEDED)
    if updated == 1:
        scope.input_tokens += result.input_tokens
        scope.output_tokens += result.output_tokens
        scope.cost_usd += cost
    return Completed(cost, canonical, totals)


def note_rate_limit(scope: Scope, provider_name: str, action: str, wait_seconds: float, reason: str) -> None:
    """Put a rate-limited wait or skip on the run's history (visible after the fact)."""
    logger.info("provider %s: %s (%s, %.2fs)", provider_name, action, reason, wait_seconds)
    if scope.run_id is None:
        return
    RunEvent.objects.create(run_id=scope.run_id, kind="llm_rate_limited", step_key=scope.step_key,
                            message=f"{provider_name}: {reason}",
                            data={"provider": provider_name, "action": action,
                                  "wait_seconds": round(wait_seconds, 3), "on_rate_limit": scope.on_rate_limit})


def check_budget(scope: Scope, *, after_call: bool = False, totals: dict[str, Any] | None = None) -> None:
    """Refuse a call when the run's budget is spent (``totals``: the run's row as the answer's
    statement returned it, which saves reading it again)."""
    if scope.run_id is None or not scope.budgeted:
        return
    row = totals if totals is not None else Run.objects.filter(pk=scope.run_id).values(
        "input_tokens", "output_tokens", "cost_usd", "max_tokens", "max_cost_usd").first()
    if row is None:
        return
    tokens = row["input_tokens"] + row["output_tokens"]
    when = "this call took the run past its budget" if after_call else "the run's budget is spent"
    limit_tokens = row["max_tokens"]
    if limit_tokens is not None and (tokens > limit_tokens or (not after_call and tokens >= limit_tokens)):
        raise BudgetExceeded(f"budget exceeded: {when}: {tokens} tokens used of max_tokens={row['max_tokens']}",
                             details={"tokens": tokens, "max_tokens": row["max_tokens"]})
    cost, limit = row["cost_usd"], row["max_cost_usd"]
    if limit is not None and (cost > limit or (not after_call and cost >= limit)):
        raise BudgetExceeded(f"budget exceeded: {when}: ${cost} spent of max_cost_usd=${limit}",
                             details={"cost_usd": str(cost), "max_cost_usd": str(limit)})


# --- one provider -------------------------------------------------------------------------


def _wait_gen(*, base: float, cap: float) -> Generator[float, Any, None]:
    """Exponential backoff with equal jitter; a Retry-After from the server wins when given."""
    exc = yield  # type: ignore[misc]
    n = 0
    while True:
        delay = min(cap, base * (2 ** n))
        delay = delay / 2 + random.random() * delay / 2
        n += 1
        retry_after = getattr(exc, "retry_after", None)
        exc = yield max(float(retry_after), 0.0) if retry_after is not None else delay


def _call_provider(provider: Provider, model: str, req: ChatRequest, scope: Scope, round_number: int,
                   key: str | None, max_tries: int,
                   on_failure: Callable[[ProviderError], bool]) -> tuple[ChatResult, Completed]:
    tries = 0

    def attempt() -> tuple[ChatResult, Completed]:
        nonlocal tries
        tries += 1
        check_budget(scope)
        admission = limits.reserve(provider, limits.estimate_tokens(req)) if limits.limited(provider) else None
        if admission is not None and not admission.admitted:
            raise RateLimited(provider, admission)
        if provider.kind == ProviderKind.FAKE:
            http = HttpRequest(f"fake://{provider.name}", {}, {"model": model, "messages": req.messages,
                                                               "system": req.system, "tools": req.tools})
            if scope.stream:
                http.body["stream"] = True
        else:
            http = client_for(provider.kind).build(provider, model, req, key)
            if scope.stream:
                http = client_for(provider.kind).streamed(http)
        try:
            call_id = _start_record(scope, provider, model, round_number, tries, http.redacted())
        except StaleProvider:
            if admission is not None:
                limits.settle(provider, admission, 0)
            raise
        scope.calls += 1
        started = time.perf_counter()
        live = _LiveText(scope, call_id, provider.name, round_number) if scope.stream else None
        try:
            if provider.kind == ProviderKind.FAKE:
                result, body, status = fake.answer(provider, req, round_number), None, None
                if live is not None:
                    _fake_stream(provider, result, live)
                body = {"fake": result.to_json()}
            else:
                if live is not None:
                    status, headers, body = _send_stream(provider, http, live)
                else:
                    status, headers, body = _send(provider, http)
                if status >= 400:
                    raise classify_status(status, headers, body)
                result = client_for(provider.kind).parse(provider, body)
            if live is not None:
                live.flush()
        except ProviderError as err:
            if live is not None:
                live.discard()
            if admission is not None:
                limits.settle(provider, admission, 0)
            _fail_record(call_id, err, scope, started)
            if on_failure(err):
                err.stop_retrying = True
            raise
        except BaseException as exc:  # a step timeout or a bug: leave evidence, then let it through
            if live is not None:
                live.discard()
            _fail_record(call_id, ProviderError(f"interrupted: {type(exc).__name__}: {exc}", permanent=True),
                         scope, started)
            raise
        if admission is not None:
            limits.settle(provider, admission, result.input_tokens + result.output_tokens)
        return result, _complete_record(call_id, provider, result, body, status, scope, started)

    def give_up(exc: Exception) -> bool:
        err = exc if isinstance(exc, ProviderError) else None
        if err is None or err.permanent or err.stop_retrying or isinstance(err, RateLimited):
            return True
        return err.retry_after is not None and err.retry_after > provider.max_retry_after_seconds

    def on_backoff(details: Any) -> None:
        logger.info("provider %s: retrying in %.2fs (try %s)", provider.name, details["wait"], details["tries"])

    retrying = backoff.on_exception(
        _wait_gen, ProviderError, max_tries=max_tries, giveup=give_up, jitter=None, on_backoff=on_backoff,
        logger=None, base=provider.backoff_seconds, cap=provider.max_backoff_seconds,
    )(attempt)
    return retrying()


# --- the chain ----------------------------------------------------------------------------


def complete(route: Route, req: ChatRequest, scope: Scope, round_number: int) -> Answer:
    """Ask each provider of ``route`` in order until one answers; record why the others did not.
    A chain held back by rate limits waits here (briefly) or raises ``RateLimitWait``."""
    earlier: list[dict[str, Any]] = []
    waited = 0.0
    while True:
        try:
            answer = _complete_once(route, req, scope, round_number)
        except _HeldBack as held:
            earlier.extend(held.reasons)
            # The worker sleeps through short waits, but not through many of them in a row.
            if waited + held.wait > rate_wait_seconds():
                note_rate_limit(scope, held.provider, "handed_back", held.wait, held.reason)
                raise RateLimitWait(f"rate limited: {held.provider}: {held.reason}; trying again in "
                                    f"{held.wait:.2f}s", details=earlier, retry_after=held.wait) from None
            note_rate_limit(scope, held.provider, "waited", held.wait, held.reason)
            time.sleep(held.wait)
            waited += held.wait
            continue
        answer.route[:0] = earlier
        return answer


class _HeldBack(Exception):  # noqa: N818 (control flow: the chain must wait for a rate limit)
    def __init__(self, provider: str, wait: float, reason: str, reasons: list[dict[str, Any]]) -> None:
        super().__init__(reason)
        self.provider, self.wait, self.reason, self.reasons = provider, wait, reason, reasons


def _complete_once(route: Route, req: ChatRequest, scope: Scope, round_number: int) -> Answer:
    reasons: list[dict[str, Any]] = []
    held: list[RateLimited] = []
    for index in range(len(route.providers)):
        provider, checked, admitted = route.providers[index], False, None
        # This process's copy of a provider row is checked by the request's started row; a copy
        # found stale is read again and the provider tried with the row as it is now.
        for _ in range(3):
            try:
                answer = _ask(route, index, provider, checked, admitted, req, scope, round_number, reasons, held)
            except _Stale as stale:
                current = fresh(provider.name)
                if current is None:
                    reasons.append({"provider": provider.name, "outcome": "skipped",
                                    "reason": "no longer configured"})
                    break
                route.providers[index] = provider = current
                checked, admitted = True, stale.admitted
                continue
            if answer is not None:
                return answer
            break
        else:
            reasons.append({"provider": provider.name, "outcome": "skipped",
                            "reason": "its configuration kept changing while it was read"})
    if held:
        # Every provider that could answer is held back: wait for the one whose window opens first.
        first = min(held, key=lambda e: e.wait_seconds)
        raise _HeldBack(first.provider_name, first.wait_seconds, str(first), reasons)
    summary = "; ".join(f"{r['provider']}: {r['reason']}" for r in reasons) or "the chain is empty"
    message = f"no provider answered ({summary})"
    if any(r.get("kind") == "transient" for r in reasons):
        raise AllProvidersFailed(message, details=reasons)
    raise AllProvidersRefused(message, details=reasons)


class _Stale(Exception):  # noqa: N818 (control flow: read the provider row again)
    def __init__(self, admitted: tuple[breaker.Admission, str, bool] | None) -> None:
        super().__init__("stale provider row")
        self.admitted = admitted


def _ask(route: Route, index: int, provider: Provider, checked: bool,
         admitted: tuple[breaker.Admission, str, bool] | None, req: ChatRequest, scope: Scope, round_number: int,
         reasons: list[dict[str, Any]], held: list[RateLimited]) -> Answer | None:
    """One provider of the chain: its answer, or None with the reason it did not answer in
    ``reasons`` (or its rate limit's hold in ``held``). Raises ``_Stale`` when this process's
    copy of the row turned out to be out of date (``checked``: the copy was just read).
    A provider is skipped only on a copy read in this call (``checked``)."""
    model = route.model_for(index)
    key = api_key(provider)
    no_key = bool(provider.api_key_env and not key)
    if (not provider.enabled or no_key) and not checked:
        raise _Stale(None)
    if not provider.enabled:
        reasons.append({"provider": provider.name, "outcome": "skipped", "reason": "disabled"})
        return None
    if no_key:
        reasons.append({"provider": provider.name, "outcome": "skipped",
                        "reason": f"no key: {provider.api_key_env} is not set"})
        return None
    if key and key not in scope.secrets:
        scope.secrets.append(key)
    admission, why, dirty = admitted or breaker.admit(provider)
    if admission is breaker.Admission.SKIP:
        if not checked:
            raise _Stale(None)  # the circuit of this very row (not of one deleted since) is open
        reasons.append({"provider": provider.name, "outcome": "skipped", "reason": why})
        return None
    probe = admission is breaker.Admission.PROBE

    def note_failure(err: ProviderError, provider: Provider = provider, probe: bool = probe) -> bool:
        """Count the failure; True when it opened the circuit (then stop retrying this provider)."""
        if not err.counts_for_breaker:
            return False
        reason = scrub(str(err), scope.secrets)
        if breaker.failed(provider, reason, probe=probe):
            logger.warning("provider %s: circuit opened after %s", provider.name, reason)
            return True
        return False

    try:
        result, completed = _call_provider(provider, model, req, scope, round_number, key,
                                           max_tries=1 if probe else provider.max_retries + 1,
                                           on_failure=note_failure)
    except StaleProvider:
        # Nothing was sent; a probe admission already taken stays this caller's.
        raise _Stale((admission, why, dirty)) from None
    except RateLimited as err:
        # A probe admission taken for nothing lapses at its probe_until (another caller takes it).
        reasons.append({"provider": provider.name, "model": model, "outcome": "rate_limited",
                        "wait_seconds": round(err.wait_seconds, 3), "reason": str(err)})
        if scope.on_rate_limit == "wait":
            raise _HeldBack(provider.name, err.wait_seconds, str(err), reasons) from None
        held.append(err)
        if index + 1 < len(route.providers):
            note_rate_limit(scope, provider.name, "fell_back", err.wait_seconds, str(err))
        return None
    except ProviderError as err:
        if probe and not err.counts_for_breaker:
            breaker.succeeded(provider)  # it answered (our request was at fault): it is up again
        reasons.append({"provider": provider.name, "model": model, "outcome": "failed", "kind": err.kind,
                        "status": err.status, "reason": scrub(str(err), scope.secrets)})
        return None
    # The answer's own statement closed the circuit if failures were counted (breaker.RESET_WHERE).
    check_budget(scope, after_call=True, totals=completed.run_totals)
    reasons.append({"provider": provider.name, "model": model, "outcome": "answered"})
    return Answer(result, provider.name, result.model or model, reasons)
