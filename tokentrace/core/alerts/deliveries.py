"""Where a rule's notifications go: the ``delivery`` object of a rule, tagged by ``type``.

``{"type": "stdout"}``, ``{"type": "http", "url": ...}`` (a webhook receiving ``alerting.payload.webhook_payload``) and
``{"type": "alertmanager", "url": ...}`` (Prometheus Alertmanager's v2 API). Configuration only; the
senders live in :mod:`tokentrace.alerting`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import msgspec

from tokentrace.core.alerts.durations import duration_text, seconds

__all__ = ["AlertmanagerDelivery", "Delivery", "StdoutDelivery", "WebhookDelivery"]

_MAX_RETRIES = 20


def _check_url(url: object, field: str) -> None:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field}: expected an absolute http(s) URL, got {url!r}")


def _check_common(url: str, timeout: str | float, max_retries: int, headers: dict[str, str]) -> str:
    _check_url(url, "url")
    whole = isinstance(max_retries, int) and not isinstance(max_retries, bool)
    if not whole or not 0 <= max_retries <= _MAX_RETRIES:
        raise ValueError(f"max_retries: must be a whole number from 0 to {_MAX_RETRIES}, got {max_retries!r}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError("headers: names and values must be strings")
    return duration_text(timeout, "timeout")


class StdoutDelivery(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type", tag="stdout"):
    """Print each notification as one JSON line on standard output."""


class WebhookDelivery(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type", tag="http"):
    """POST the webhook payload to ``url``.

    ``secret`` turns on the HMAC-SHA256 signature headers (see :mod:`tokentrace.alerting.signing`).
    ``timeout`` bounds one attempt; a failed attempt is retried up to ``max_retries`` times.
    """

    url: str
    secret: str | None = None
    timeout: str | float = "5s"
    max_retries: int = 3
    headers: dict[str, str] = {}

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(
            self, "timeout", _check_common(self.url, self.timeout, self.max_retries, self.headers)
        )
        if self.secret is not None and not (isinstance(self.secret, str) and self.secret):
            raise ValueError("secret: must be a non-empty string when given")

    @property
    def timeout_s(self) -> float:
        """The per-attempt timeout in seconds."""
        return seconds(str(self.timeout))

    def __repr__(self) -> str:
        return f"WebhookDelivery(url={self.url!r}, secret={'***' if self.secret else None})"


class AlertmanagerDelivery(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type", tag="alertmanager"
):
    """POST to an Alertmanager's ``/api/v2/alerts``; ``url`` is its base URL (``http://am:9093``).

    ``generator_url`` is the link Alertmanager shows back to tokentrace (default: the service's
    external URL).
    """

    url: str
    timeout: str | float = "5s"
    max_retries: int = 3
    generator_url: str | None = None
    headers: dict[str, str] = {}

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(
            self, "timeout", _check_common(self.url, self.timeout, self.max_retries, self.headers)
        )
        if self.generator_url is not None:
            _check_url(self.generator_url, "generator_url")

    @property
    def timeout_s(self) -> float:
        """The per-attempt timeout in seconds."""
        return seconds(str(self.timeout))


Delivery = StdoutDelivery | WebhookDelivery | AlertmanagerDelivery
