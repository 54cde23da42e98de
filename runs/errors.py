"""Errors the run services raise; each door maps them to its own way of saying no."""

from __future__ import annotations


class StartError(ValueError):
    """A run could not be started; ``errors`` lists (path, message)."""

    http_status = 400

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        self.errors = errors or []
        detail = "".join(f"\n  {p}: {m}" for p, m in self.errors)
        super().__init__(message + detail)


class NotFound(LookupError):
    http_status = 404
