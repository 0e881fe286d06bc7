"""Spans to a seed-001 (MIST) server: one ``trace.span`` message with checksum per ``POST {url}/mist``.

The queue, background thread, backoff, flush/close and fork handling are ``HTTPTransport``'s; only the
request differs. A MIST message carries one span, so a batch taken from the queue is posted span by span
over the kept-alive connection. Each span is retried on connection errors, 429 and 5xx; any other 4xx
rejects it (counted, the server's message logged). A 2xx counts as sent whatever the body (the seed's
server answers 202 with no body).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from tokentrace.core.mist import encode_message, from_span
from tokentrace.core.span import Span

from .http import HTTPTransport, _error_message

__all__ = ["MistTransport"]

log = logging.getLogger(__name__)


class MistTransport(HTTPTransport):
    """Posts each span as a MIST message from ``source`` (or the span's own ``caller``) to ``{url}/mist``.

    Takes ``HTTPTransport``'s options (``token``, ``max_queue``, ``max_retries``, ``timeout``, ...).
    """

    name = "mist"

    def __init__(self, url: str, source: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.source = source
        self.endpoint = f"{self.url}/mist"
        self._path = f"{urlsplit(url).path.rstrip('/')}/mist"

    def _deliver(self, spans: Sequence[Span]) -> None:
        for index, span in enumerate(spans):
            if self._closing and time.monotonic() > self._deadline:
                self._count("dropped", len(spans) - index)
                return
            try:
                body = encode_message(span.caller or self.source, from_span(span))
            except (ValueError, OverflowError) as exc:
                self._count("dropped")
                self._log("encode", logging.ERROR, "mist transport: cannot encode a span (%s); dropped", exc)
                continue
            self._deliver_message(body)

    def _deliver_message(self, body: bytes) -> None:
        answer = self._post_until_answered(body)
        status = answer.status
        if status is None:
            self._count("dropped")
            self._log(
                "gave up",
                logging.WARNING,
                "mist transport: dropped a span sent to %s (%s)",
                self.endpoint,
                answer.problem,
            )
        elif 200 <= status < 300:
            self._count("sent")
        else:
            self._count("failed_attempts")
            self._count("rejected")
            self._log(
                f"status {status}",
                logging.ERROR,
                "mist transport: %s rejected a span with HTTP %d: %s (not retried)",
                self.endpoint,
                status,
                _error_message(answer.payload),
            )
