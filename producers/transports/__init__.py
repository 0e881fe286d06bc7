"""Transports: where finished spans go (stdout, JSONL files, HTTP, fan-out, nowhere)."""

from tokentrace.producers.transports.base import BaseTransport, Transport, TransportStats

__all__ = ["BaseTransport", "Transport", "TransportStats"]
