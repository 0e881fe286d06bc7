"""Shared pytest configuration: real-server fixtures (Kafka, Redis, Prometheus) live in tests.infra."""

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.infra.fixtures"]

# Two shared cores run servers beside the tests: timing-based health checks would flake, not find bugs.
settings.register_profile("tokentrace", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile("tokentrace")
