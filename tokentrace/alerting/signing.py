"""HMAC-SHA256 signatures on webhook deliveries, so a receiver can check who sent them and when.

When a webhook delivery has a ``secret``, every request carries two headers:

- ``X-Tokentrace-Timestamp``: the send time in whole Unix seconds, e.g. ``1773584581``.
- ``X-Tokentrace-Signature``: ``sha256=`` followed by the lowercase hex HMAC-SHA256, keyed with the
  secret (UTF-8), of the timestamp, a ``.``, and the exact request body bytes:
  ``hex(hmac_sha256(secret, f"{timestamp}." + body))``.

Signing the timestamp lets the receiver reject replays: recompute the signature over the body as
received, compare in constant time, and refuse timestamps more than a few minutes old. Each retry is
signed afresh with its own timestamp.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "sign", "signature_headers", "verify"]

SIGNATURE_HEADER = "X-Tokentrace-Signature"
TIMESTAMP_HEADER = "X-Tokentrace-Timestamp"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Tokentrace-Signature`` value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signature_headers(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """Both signature headers for one request."""
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}


def verify(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now_s: float,
    tolerance_s: float = 300,
) -> bool:
    """Whether the headers sign ``body`` with ``secret``, timestamped within ``tolerance_s`` of now."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    if abs(now_s - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)
