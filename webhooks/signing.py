"""Signing webhook bodies: ``X-Stevora-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``.

Receivers recompute the HMAC over the timestamp header, a dot and the raw body,
compare in constant time, and refuse timestamps older than a few minutes (replay).
"""

from __future__ import annotations

import hashlib
import hmac
import time


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: str, timestamp_header: str, body: bytes, signature_header: str, *,
           tolerance_seconds: int = 300, now: float | None = None) -> bool:
    """What a receiver does (Python); docs/api.md shows the same in words and shell."""
    try:
        timestamp = int(timestamp_header)
    except (TypeError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_seconds:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, part.strip()) for part in signature_header.split(","))
