"""Provider rate limits shared by every worker: ``requests_per_minute`` and ``tokens_per_minute``.

The count lives in the database, so it holds across processes and machines: a sliding
window log (``ProviderRateGrant``, one row per admitted request) over the provider's
``rate_window_seconds`` (60 by default). An admission is one transaction serialised on
the provider's row (``SELECT … FOR NO KEY UPDATE`` on PostgreSQL; SQLite's write lock,
taken at ``BEGIN IMMEDIATE``): it deletes the grants that left the window, counts the
rest, and inserts its own grant only if both limits still hold. So in any stretch of
``rate_window_seconds`` no more than ``requests_per_minute`` requests are *started*,
whatever the number of workers — and the window slides, so there is no double burst at
the edge of two fixed minutes.

Tokens are reserved before the call with an estimate (``estimate_tokens``: the prompt's
characters / 4, plus ``max_tokens`` or ``DEFAULT_OUTPUT_ESTIMATE``; never more than the
limit itself, so one large request can still run in an empty window) and corrected with
the real usage after it (a failed request releases its tokens).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction

from steps import clock

from .models import Provider, ProviderRateGrant
from .registry import StaleProvider
from .wire import ChatRequest

DEFAULT_OUTPUT_ESTIMATE = 512
CHARS_PER_TOKEN = 4


@dataclass
class Admission:
    admitted: bool
    grant_id: int | None = None
    wait_seconds: float = 0.0
    reason: str = ""


def limited(provider: Provider) -> bool:
    return bool(provider.requests_per_minute or provider.tokens_per_minute)


def estimate_tokens(req: ChatRequest) -> int:
    """What a request may cost before it is sent: its prompt's size / 4, plus its output limit."""
    prompt = json.dumps({"messages": req.messages, "system": req.system, "tools": req.tools},
                        separators=(",", ":"), default=str)
    output = int(req.max_tokens) if req.max_tokens else DEFAULT_OUTPUT_ESTIMATE
    return math.ceil(len(prompt) / CHARS_PER_TOKEN) + output


def reserve(provider: Provider, tokens: int) -> Admission:
    """Admit one request (with ``tokens`` estimated) under the provider's limits, or say how long
    until it would fit. Nothing is written when it does not fit."""
    if not limited(provider):
        return Admission(True)
    window = timedelta(seconds=provider.rate_window_seconds)
    rpm, tpm = provider.requests_per_minute, provider.tokens_per_minute
    need = min(tokens, tpm) if tpm else 0
    with transaction.atomic():
        # The serialisation point of this provider's admissions (FOR NO KEY UPDATE does not block
        # the LLMCall inserts that reference the row). It also tells whether the caller's copy of
        # the row is current: limits edited since it was read are applied, not the old ones.
        row = Provider.objects.select_for_update(no_key=True).filter(pk=provider.pk).values_list(
            "updated_at", "enabled").first()
        if row is None or row[0] != provider.updated_at or not row[1]:
            raise StaleProvider(provider)
        now = clock.now()
        ProviderRateGrant.objects.filter(provider=provider, granted_at__lte=now - window).delete()
        grants = list(ProviderRateGrant.objects.filter(provider=provider).order_by("granted_at", "id")
                      .values_list("granted_at", "tokens"))
        waits: list[tuple[float, str]] = []
        if rpm and len(grants) >= rpm:
            # The window opens for us when the grant rpm places back leaves it.
            opens = grants[len(grants) - rpm][0] + window
            waits.append(((opens - now).total_seconds(),
                          f"requests_per_minute={rpm} reached ({len(grants)} in the last "
                          f"{provider.rate_window_seconds:g}s)"))
        if tpm:
            used = sum(t for _, t in grants)
            if used + need > tpm:
                left = used
                for granted_at, spent in grants:
                    left -= spent
                    if left + need <= tpm:
                        waits.append(((granted_at + window - now).total_seconds(),
                                      f"tokens_per_minute={tpm} reached ({used} used in the last "
                                      f"{provider.rate_window_seconds:g}s, {need} needed)"))
                        break
        if waits:
            wait, reason = max(waits)
            return Admission(False, wait_seconds=max(wait, 0.001), reason=reason)
        grant = ProviderRateGrant.objects.create(provider=provider, granted_at=now, tokens=need)
    return Admission(True, grant_id=grant.pk)


def settle(provider: Provider, admission: Admission, used_tokens: int) -> None:
    """Replace a grant's estimate with what the call really used (0 when it failed)."""
    if admission.grant_id is None or not provider.tokens_per_minute:
        return
    ProviderRateGrant.objects.filter(pk=admission.grant_id).update(tokens=max(int(used_tokens), 0))


def describe(provider: Provider) -> dict[str, Any]:
    return {"requests_per_minute": provider.requests_per_minute, "tokens_per_minute": provider.tokens_per_minute,
            "rate_window_seconds": provider.rate_window_seconds}
