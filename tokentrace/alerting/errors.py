"""The error the HTTP layer turns into ``{"error": message}`` with ``status``."""

from __future__ import annotations

__all__ = ["AlertError"]


class AlertError(Exception):
    """A request about alerts failed: 400 invalid field, 404 unknown rule, 409 conflict, 500 storage."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
