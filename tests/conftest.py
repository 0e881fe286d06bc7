"""Shared pytest configuration: real-server fixtures (Kafka, Redis, Prometheus) live in tests.infra."""

pytest_plugins = ["tests.infra.fixtures"]
