"""Transports: where finished spans go (stdout, JSON Lines files, HTTP, fan-out, nowhere).

The Kafka transport lives in ``tokentrace.producers.transports.kafka`` (import it from there; it needs
aiokafka).
"""

from .base import BaseTransport, SupportsStats, Transport, TransportStats
from .file import FileTransport, ReadResult, read_spans
from .http import MAX_BATCH, HTTPTransport
from .multi import MultiTransport
from .noop import NoopTransport
from .stdout import StdoutTransport

__all__ = [
    "MAX_BATCH",
    "BaseTransport",
    "FileTransport",
    "HTTPTransport",
    "MultiTransport",
    "NoopTransport",
    "ReadResult",
    "StdoutTransport",
    "SupportsStats",
    "Transport",
    "TransportStats",
    "read_spans",
]
