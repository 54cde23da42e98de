"""A circuit breaker per provider, shared by every worker through a ``ProviderHealth`` row.

Every transition is a guarded UPDATE whose row count decides who won, so it works the
same on PostgreSQL and on embedded SQLite and needs no lock held across an HTTP call:

* ``admit`` reads the row (one indexed SELECT — what a skipped provider costs). Open and
  cooling: skip. Cooling over: ``open -> half_open`` guarded on ``state='open'`` — exactly
  one caller wins and probes; the others keep skipping. A probe whose holder died
  (``probe_until`` passed) may be taken over the same way.
* ``succeeded`` closes the circuit; ``failed`` counts a consecutive failure and opens the
  circuit at the threshold, or re-opens it when the probe failed.
"""

from __future__ import annotations

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


def admit(provider: Provider) -> tuple[Admission, str, bool]:
    """May this caller send a request to ``provider`` now?

    Returns the decision, why, and whether a success must reset the row (failures counted).
    """
    row = ProviderHealth.objects.filter(pk=provider.pk).values(
        "state", "open_until", "probe_until", "consecutive_failures").first()
    if row is None:
        return Admission.PASS, "", False
    if row["state"] == BreakerState.CLOSED:
        return Admission.PASS, "", row["consecutive_failures"] > 0
    now = timezone.now()
    probe_until = now + timedelta(seconds=provider.timeout_seconds * (provider.max_retries + 1) + 5)
    if row["state"] == BreakerState.OPEN:
        if row["open_until"] is not None and row["open_until"] > now:
            left = (row["open_until"] - now).total_seconds()
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
    """Operator action: close the circuit now."""
    ProviderHealth.objects.filter(pk=provider.pk).update(
        state=BreakerState.CLOSED, consecutive_failures=0, open_until=None, probe_until=None,
        changed_at=timezone.now())
