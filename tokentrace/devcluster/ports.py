"""The dev cluster's default ports, apart from the cluster code so the command line loads without it."""

from __future__ import annotations

__all__ = ["DEFAULT_API_PORT", "DEFAULT_KAFKA_PORT", "DEFAULT_REDIS_PORT"]

DEFAULT_KAFKA_PORT = 9092
DEFAULT_REDIS_PORT = 6379
DEFAULT_API_PORT = 9095
