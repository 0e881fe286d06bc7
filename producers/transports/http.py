"""Spans to a tokentrace server: batched JSON ``POST {url}/spans`` from a background thread.

``send`` only appends to a bounded in-memory queue (spans that do not fit are dropped and counted), so the
traced code is never blocked or failed by the network. A worker thread posts batches of at most
``batch_size`` (≤ 1000) spans when a batch is full or ``flush_interval`` seconds after the first queued
span, and expects ``202 {"accepted": n}``:

* connection errors, 429 and 5xx are retried with exponential backoff and jitter (``Retry-After`` is
  honoured), up to ``max_retries`` times; then the batch is dropped and counted. Every attempt at one batch
  carries the same ``Idempotency-Key`` (a random one per batch), so a server that made the batch durable but
  whose 202 was lost does not count it twice;
* 413 splits the batch in halves; any other 4xx is not retried: the spans are counted as ``rejected``
  and the server's error message is logged.

The transport flushes at interpreter exit (``atexit``) and restarts cleanly in a forked child.
"""

from __future__ import annotations

import atexit
import http.client
import logging
import os
import random
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from typing import NamedTuple
from urllib.parse import urlsplit

import msgspec

from tokentrace.core.codec import encode_json
from tokentrace.core.span import Span

from .base import BaseTransport

__all__ = ["MAX_BATCH", "HTTPTransport"]

log = logging.getLogger(__name__)

#: The server's default ``http_server.max_batch_size`` (``HTTPServerConfig``): no batch is larger.
MAX_BATCH = 1000
_STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
_live: weakref.WeakSet[HTTPTransport] = weakref.WeakSet()


class _Accepted(msgspec.Struct):
    accepted: int


_accepted = msgspec.json.Decoder(_Accepted)
_error_body = msgspec.json.Decoder(dict[str, object])


class _Answer(NamedTuple):
    """The final answer to a POST: its status (None: no final answer, given up) and body, why earlier
    attempts failed, and how many attempts were made."""

    status: int | None
    payload: bytes
    problem: str
    attempts: int


class HTTPTransport(BaseTransport):
    """Posts spans to ``{url}/spans`` in the background; ``token`` is sent as a bearer token.

    ``max_queue`` bounds the spans held in memory. ``backoff`` is the first retry delay (doubling up to
    ``max_backoff``), ``timeout`` the per-request socket timeout, ``close_timeout`` how long ``close``
    keeps trying to deliver what is queued.
    """

    name = "http"

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        batch_size: int = MAX_BATCH,
        flush_interval: float = 1.0,
        max_queue: int = 10_000,
        max_retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 10.0,
        timeout: float = 10.0,
        close_timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}, got {batch_size}")
        if max_queue < 1 or max_retries < 0 or flush_interval < 0 or backoff < 0 or timeout <= 0:
            raise ValueError("max_queue >= 1, max_retries >= 0, flush_interval/backoff >= 0, timeout > 0")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http(s)://host[:port][/path], got {url!r}")
        self.url = url.rstrip("/")
        self.endpoint = f"{self.url}/spans"
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.close_timeout = close_timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = f"{parts.path.rstrip('/')}/spans"
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": "tokentrace-python",
            **(headers or {}),
        }
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._queue: deque[Span] = deque()
        self._conn: http.client.HTTPConnection | None = None
        self._init_threading()
        _live.add(self)

    def _init_threading(self) -> None:
        """Fresh locks, no worker (at construction and in a forked child)."""
        self._counter_lock = threading.Lock()
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight = 0
        self._flushing = 0
        self._closing = False
        self._deadline = float("inf")
        self._logged: dict[str, float] = {}

    # -- caller side -------------------------------------------------------------------------------------

    def send(self, spans: Sequence[Span]) -> None:
        """Queue ``spans`` for delivery; returns at once. Spans that do not fit are dropped and counted."""
        if not spans:
            return
        with self._cond:
            if self._closing:
                dropped = len(spans)
            else:
                room = self.max_queue - len(self._queue)
                was_empty = not self._queue
                if room >= len(spans):
                    self._queue.extend(spans)
                    dropped = 0
                else:
                    self._queue.extend(spans[:room])
                    dropped = len(spans) - room
                if self._thread is None:
                    self._start_worker()
                if was_empty or len(self._queue) >= self.batch_size:
                    self._cond.notify_all()
        if dropped:
            self._count("dropped", dropped)
            self._log("queue", logging.WARNING, "http transport: queue full or closed, dropped %d spans", dropped)

    def flush(self, timeout: float | None = None) -> None:
        """Post what is queued now and wait (at most ``timeout`` s) until it is delivered or given up on."""
        with self._cond:
            if self._thread is None:
                return
            self._flushing += 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: not self._queue and not self._inflight, timeout)
            finally:
                self._flushing -= 1

    def close(self) -> None:
        """Deliver what is queued within ``close_timeout`` seconds, then stop; the rest is dropped."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + self.close_timeout
            thread = self._thread
            self._cond.notify_all()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.close_timeout + 0.5)
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
        if left:
            self._count("dropped", left)
            log.warning("http transport: closed with %d undelivered spans; dropped", left)

    def _queue_depth(self) -> int:
        return len(self._queue) + self._inflight

    # -- worker side -------------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tokentrace-http", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                try:
                    self._deliver(batch)
                except Exception:
                    self._count("dropped", len(batch))
                    log.exception("http transport: unexpected error; dropped %d spans", len(batch))
                finally:
                    with self._cond:
                        self._inflight = 0
                        self._cond.notify_all()
        finally:
            self._disconnect()

    def _next_batch(self) -> list[Span] | None:
        """Wait for a full batch, the flush interval, a flush or close; ``None`` when closed and empty."""
        queue = self._queue
        with self._cond:
            while not queue:
                if self._closing:
                    return None
                self._cond.wait()
            if self._closing and time.monotonic() > self._deadline:
                self._count("dropped", len(queue))
                queue.clear()
                return None
            if len(queue) < self.batch_size and not (self._flushing or self._closing):
                self._cond.wait_for(
                    lambda: len(queue) >= self.batch_size or bool(self._flushing) or self._closing,
                    self.flush_interval,
                )
            batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
            self._inflight = len(batch)
            return batch

    def _deliver(self, spans: Sequence[Span]) -> None:
        answer = self._post_until_answered(encode_json(list(spans)))
        status, payload = answer.status, answer.payload
        if status is None:
            self._count("dropped", len(spans))
            self._log(
                "gave up",
                logging.WARNING,
                "http transport: dropped %d spans after %d attempts to %s (%s)",
                len(spans),
                answer.attempts,
                self.endpoint,
                answer.problem,
            )
        elif 200 <= status < 300:
            self._accepted(spans, payload)
        elif status == 413 and len(spans) > 1:
            half = len(spans) // 2
            self._deliver(spans[:half])
            self._deliver(spans[half:])
        else:
            self._count("failed_attempts")
            self._count("rejected", len(spans))
            self._log(
                f"status {status}",
                logging.ERROR,
                "http transport: %s rejected %d spans with HTTP %d: %s (not retried)",
                self.endpoint,
                len(spans),
                status,
                _error_message(payload),
            )

    def _post_until_answered(self, body: bytes) -> _Answer:
        """Post ``body``, retrying connection errors, 429 and 5xx with backoff, until a final answer (2xx or
        another 4xx) or the attempts run out (``status`` None). Counts retries and failed attempts."""
        retry_after: float | None = None
        problem = ""
        attempts = 0
        key = uuid.uuid4().hex  # one per batch, the same on every retry of it
        for attempt in range(self.max_retries + 1):
            attempts = attempt + 1
            if attempt:
                if not self._sleep(self._delay(attempt, retry_after)):
                    problem += "; gave up at close"
                    break
                self._count("retries")
            try:
                status, payload, retry_after = self._post(body, key)
            except (OSError, http.client.HTTPException) as exc:
                self._count("failed_attempts")
                problem, retry_after = f"{type(exc).__name__}: {exc}", None
                continue
            if status == 429 or status >= 500:
                self._count("failed_attempts")
                problem = f"HTTP {status}"
                continue
            return _Answer(status, payload, problem, attempts)
        return _Answer(None, b"", problem, attempts)

    def _accepted(self, spans: Sequence[Span], payload: bytes) -> None:
        try:
            accepted = min(len(spans), max(0, _accepted.decode(payload).accepted))
        except msgspec.DecodeError:
            accepted = len(spans)
        self._count("sent", accepted)
        if accepted < len(spans):
            self._count("rejected", len(spans) - accepted)
            self._log("partial", logging.WARNING, "http transport: server accepted %d of %d", accepted, len(spans))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.max_backoff, retry_after)
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # "equal jitter": never zero, never in lockstep

    def _sleep(self, delay: float) -> bool:
        """Sleep before a retry; False when closing and the delay would pass the close deadline."""
        end = time.monotonic() + delay
        if not self._closing:
            self._wake.wait(delay)  # close() cuts this short
        if self._closing:
            if end > self._deadline:
                return False
            time.sleep(max(0.0, end - time.monotonic()))
        return True

    def _post(self, body: bytes, key: str) -> tuple[int, bytes, float | None]:
        """One POST; retried once at once if a kept-alive connection turned out to be closed."""
        headers = {**self._headers, "Idempotency-Key": key}
        for fresh in (self._conn is None, True):
            conn = self._connect()
            try:
                conn.request("POST", self._path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except _STALE_CONNECTION:
                self._disconnect()
                if fresh:
                    raise
                continue
            except BaseException:
                self._disconnect()
                raise
            if response.will_close:
                self._disconnect()
            return response.status, payload, _retry_after(response.getheader("Retry-After"))
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout)
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _log(self, key: str, level: int, message: str, *args: object) -> None:
        """Log a recurring problem at most once a minute."""
        now = time.monotonic()
        if now - self._logged.get(key, -60.0) >= 60.0:
            self._logged[key] = now
            log.log(level, message, *args)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    return seconds if seconds >= 0 else None


def _error_message(payload: bytes) -> str:
    try:
        error = _error_body.decode(payload).get("error")
    except msgspec.DecodeError:
        error = None
    return str(error) if error is not None else payload[:200].decode(errors="replace")


def _close_all() -> None:
    for transport in list(_live):
        transport.close()


def _after_fork() -> None:
    for transport in list(_live):
        transport._queue.clear()  # the parent delivers these
        transport._conn = None
        transport._init_threading()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_after_fork)
