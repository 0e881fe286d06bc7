"""Senders: one notification, one attempt. Retrying is the dispatcher's job (:mod:`.delivery`).

A failed attempt raises :class:`DeliveryFailed`, which says whether trying again can help: connection
errors, timeouts, 429 and 5xx can; other 4xx cannot (the request itself is wrong).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Protocol, TextIO

import aiohttp
import msgspec

from tokentrace.alerting.payload import alertmanager_alert, webhook_payload
from tokentrace.alerting.signing import signature_headers
from tokentrace.core.alerts import (
    AlertmanagerDelivery,
    Delivery,
    Notification,
    StdoutDelivery,
    WebhookDelivery,
)

__all__ = [
    "USER_AGENT",
    "AlertmanagerSink",
    "DeliveryFailed",
    "Sink",
    "SinkFactory",
    "StdoutSink",
    "WebhookSink",
]

USER_AGENT = "tokentrace-alerts/0.4"
_encode = msgspec.json.Encoder().encode


class DeliveryFailed(Exception):
    """One delivery attempt failed; ``retry_after_s`` is the server's ``Retry-After``, if it sent one."""

    def __init__(self, message: str, *, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class Sink(Protocol):
    """Delivers one notification once, raising :class:`DeliveryFailed` on failure."""

    @property
    def max_retries(self) -> int:
        """How many times a failed attempt may be repeated."""
        ...

    async def send(self, note: Notification) -> None: ...


class StdoutSink:
    """Writes the webhook payload as one JSON line to ``stream``."""

    max_retries = 0

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    async def send(self, note: Notification) -> None:
        stream = self._stream or sys.stdout
        stream.write(_encode(webhook_payload(note)).decode() + "\n")
        stream.flush()


def _retry_after(headers: Mapping[str, str]) -> float | None:
    text = headers.get("Retry-After", "")
    return float(text) if text.isdigit() else None


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
) -> None:
    """POST ``body`` as JSON; success is any 2xx."""
    sent = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
    try:
        async with session.post(
            url, data=body, headers=sent, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            if 200 <= response.status < 300:
                await response.read()
                return
            detail = (await response.text(errors="replace"))[:200].strip()
            retryable = response.status == 429 or response.status >= 500
            raise DeliveryFailed(
                f"{url} answered {response.status} {detail}".rstrip(),
                retryable=retryable,
                retry_after_s=_retry_after(response.headers) if retryable else None,
            )
    except TimeoutError:
        raise DeliveryFailed(f"{url} timed out after {timeout_s:g}s", retryable=True) from None
    except aiohttp.ClientError as exc:
        raise DeliveryFailed(f"{url}: {type(exc).__name__}: {exc}", retryable=True) from None


class WebhookSink:
    """POSTs the webhook payload (``payload.webhook_payload``), signed when the delivery has a secret (see :mod:`.signing`)."""

    def __init__(self, session: aiohttp.ClientSession, delivery: WebhookDelivery) -> None:
        self._session = session
        self._delivery = delivery
        self.max_retries = delivery.max_retries

    async def send(self, note: Notification) -> None:
        body = _encode(webhook_payload(note))
        headers = dict(self._delivery.headers)
        if self._delivery.secret:
            headers.update(signature_headers(self._delivery.secret, body, int(time.time())))
        await _post(self._session, self._delivery.url, body, headers, self._delivery.timeout_s)


class AlertmanagerSink:
    """POSTs one alert to ``<url>/api/v2/alerts`` (see :func:`.payload.alertmanager_alert`)."""

    def __init__(self, session: aiohttp.ClientSession, delivery: AlertmanagerDelivery, generator_url: str) -> None:
        self._session = session
        self._delivery = delivery
        self._url = delivery.url.rstrip("/") + "/api/v2/alerts"
        self._generator_url = delivery.generator_url or generator_url
        self.max_retries = delivery.max_retries

    async def send(self, note: Notification) -> None:
        body = _encode([alertmanager_alert(note, self._generator_url)])
        await _post(self._session, self._url, body, self._delivery.headers, self._delivery.timeout_s)


class SinkFactory:
    """Builds the sink for a delivery config, sharing one HTTP session (opened on first use)."""

    def __init__(self, *, generator_url: str, stream: TextIO | None = None) -> None:
        self._generator_url = generator_url
        self._stdout = StdoutSink(stream)
        self._session: aiohttp.ClientSession | None = None

    def __call__(self, delivery: Delivery) -> Sink:
        if isinstance(delivery, StdoutDelivery):
            return self._stdout
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        if isinstance(delivery, WebhookDelivery):
            return WebhookSink(self._session, delivery)
        return AlertmanagerSink(self._session, delivery, self._generator_url)

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
