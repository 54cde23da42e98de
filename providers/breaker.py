"""A circuit breaker per provider, shared by every worker through a ``ProviderHealth`` row.

Every transition is a guarded UPDATE whose row count decides who won, so it works the
same on PostgreSQL and on embedded SQLite and needs no lock held across an HTTP call:

* ``admit`` reads the row (one primary-key SELECT). Open and cooling: skip — and this
  process remembers it for up to a second, so a hot path skips an open provider without
  even that query. Closed with no failures counted: pass — remembered the same way
  (``CLOSED_CACHE_SECONDS``), so the hot path of a healthy provider reads nothing; a
  circuit another worker opened is honoured here within that second, and a failure in
  this process forgets it at once. Cooling over: ``open -> half_open`` guarded on ``state='open'`` — exactly
  one caller wins and probes; the others keep skipping. A probe whose holder died
  (``probe_until`` passed) may be taken over the same way.
* ``succeeded`` closes the circuit (on the hot path the answer's durable statement does
  the same, guarded by ``RESET_WHERE``, so a success costs no statement of its own);
  ``failed`` counts a consecutive failure and opens the circuit at the threshold, or
  re-opens it when the probe failed.
"""

from __future__ import annotations

import time
from datetime import timedelta
from enum import Enum

from django.db.models import F, Q
from django.utils import timezone

from .models import BreakerState, Provider, ProviderHealth


class Admission(Enum):
    PASS = "pass"
    PROBE = "probe"
    SKIP = "skip"


def _ensure(provider: Provider) -> None:
    ProviderHealth.objects.get_or_create(provider=provider)


# provider id -> time.monotonic() until which this process knows the circuit is open. Kept
# at most OPEN_CACHE_SECONDS (and never past the cooling-off), so that an operator's reset is
# seen within a second while a hot path skips an open provider without a query.
OPEN_CACHE_SECONDS = 1.0
_known_open: dict[int, float] = {}
# provider id -> time.monotonic() until which this process takes the circuit as closed with
# no failures counted (the row was read so). At most CLOSED_CACHE_SECONDS old.
CLOSED_CACHE_SECONDS = 1.0
_known_closed: dict[int, float] = {}
# What a success resets: the guard of ``succeeded`` (and of the answer's statement in
# providers.chain), so that a healthy provider's row is not written at all.
RESET_WHERE = "(state <> 'closed' OR consecutive_failures > 0)"


def admit(provider: Provider) -> tuple[Admission, str, bool]:
    """May this caller send a request to ``provider`` now?

    Returns the decision, why, and whether a success must reset the row (failures counted).
    """
    clock = time.monotonic()
    known = _known_closed.get(provider.pk)
    if known is not None:
        if known > clock:
            return Admission.PASS, "", False
        _known_closed.pop(provider.pk, None)
    known = _known_open.get(provider.pk)
    if known is not None:
        if known > clock:
            return Admission.SKIP, "circuit open", True
        _known_open.pop(provider.pk, None)
    row = ProviderHealth.objects.filter(pk=provider.pk).values(
        "state", "open_until", "probe_until", "consecutive_failures").first()
    if row is None or (row["state"] == BreakerState.CLOSED and row["consecutive_failures"] == 0):
        _known_closed[provider.pk] = clock + CLOSED_CACHE_SECONDS
        return Admission.PASS, "", False
    if row["state"] == BreakerState.CLOSED:
        return Admission.PASS, "", True
    now = timezone.now()
    probe_until = now + timedelta(seconds=provider.timeout_seconds * (provider.max_retries + 1) + 5)
    if row["state"] == BreakerState.OPEN:
        if row["open_until"] is not None and row["open_until"] > now:
            left = (row["open_until"] - now).total_seconds()
            _known_open[provider.pk] = time.monotonic() + min(left, OPEN_CACHE_SECONDS)
            return Admission.SKIP, f"circuit open ({left:.1f}s of cooling-off left)", True
        won = ProviderHealth.objects.filter(pk=provider.pk, state=BreakerState.OPEN).filter(
            Q(open_until__isnull=True) | Q(open_until__lte=now)).update(
            state=BreakerState.HALF_OPEN, probe_until=probe_until, changed_at=now)
        if won == 1:
            return Admission.PROBE, "circuit half-open: this call is the probe", True
        return Admission.SKIP, "circuit half-open: another caller holds the probe", True
    # half_open: someone is probing; take the probe over only if its holder is overdue.
    if row["probe_until"] is not None and row["probe_until"] < now:
        won = ProviderHealth.objects.filter(pk=provider.pk, state=BreakerState.HALF_OPEN,
                                            probe_until__lt=now).update(probe_until=probe_until, changed_at=now)
        if won == 1:
            return Admission.PROBE, "circuit half-open: the previous probe was lost; this call is the probe", True
    return Admission.SKIP, "circuit half-open: another caller holds the probe", True


def succeeded(provider: Provider) -> None:
    ProviderHealth.objects.filter(pk=provider.pk).filter(
        ~Q(state=BreakerState.CLOSED) | Q(consecutive_failures__gt=0)).update(
        state=BreakerState.CLOSED, consecutive_failures=0, open_until=None, probe_until=None,
        changed_at=timezone.now())


def failed(provider: Provider, reason: str, *, probe: bool) -> bool:
    """Count a failure; returns True when this call opened (or re-opened) the circuit."""
    _known_closed.pop(provider.pk, None)
    _ensure(provider)
    now = timezone.now()
    open_until = now + timedelta(seconds=provider.breaker_cooldown_seconds)
    if probe:
        return ProviderHealth.objects.filter(pk=provider.pk, state=BreakerState.HALF_OPEN).update(
            state=BreakerState.OPEN, open_until=open_until, probe_until=None, last_error=reason[:2000],
            consecutive_failures=F("consecutive_failures") + 1, changed_at=now) == 1
    ProviderHealth.objects.filter(pk=provider.pk).update(
        consecutive_failures=F("consecutive_failures") + 1, last_error=reason[:2000])
    return ProviderHealth.objects.filter(
        pk=provider.pk, state=BreakerState.CLOSED, consecutive_failures__gte=provider.breaker_threshold).update(
        state=BreakerState.OPEN, open_until=open_until, changed_at=now) == 1


def reset(provider: Provider) -> None:
    """Operator action: close the circuit now (other processes see it within OPEN_CACHE_SECONDS)."""
    _known_open.pop(provider.pk, None)
    _known_closed.pop(provider.pk, None)
    ProviderHealth.objects.filter(pk=provider.pk).update(
        state=BreakerState.CLOSED, consecutive_failures=0, open_until=None, probe_until=None,
        changed_at=timezone.now())
