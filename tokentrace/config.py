"""``tokentrace.yml``: the server's configuration file.

Keys follow spec 003/004 (``http_server.addr``, ``http_server.auth_token``, ``prometheus_path``,
``max_batch_size``). ``${VAR}`` and ``${VAR:-default}`` are expanded from the environment. An unknown key
or a bad value is an error that names it (``unknown field `adr` - at `$.http_server```).

Nothing fails open: ``${VAR}`` with VAR unset is an error naming VAR and the key (``auth_token:
"${TOKENTRACE_API_TOKEN}"`` must never quietly become "no token"), and an empty ``auth_token`` is an error,
not "authentication off". A value that is exactly ``${VAR:-}`` declares the variable optional: unset or
empty, the key is left unset (null), which is how the compose stack makes its token optional.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import msgspec
import yaml

from tokentrace.core.alerts.rules import rules_from_config
from tokentrace.core.timefmt import parse_duration

__all__ = [
    "AggregationConfig",
    "Config",
    "ConfigError",
    "HTTPServerConfig",
    "KafkaConfig",
    "PriceOverride",
    "RedisConfig",
    "StorageConfig",
    "load_config",
    "parse_config",
]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: What Kafka accepts in a topic name (and so in the app id, which Faust's internal topic names start with).
_KAFKA_NAME = re.compile(r"[A-Za-z0-9._-]+")
_MAX_TOPIC = 249
#: Faust names internal topics ``<app_id>-buckets-changelog``, ``<app_id>-__assignor-__leader``: room for those.
_MAX_APP_ID = 200


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class HTTPServerConfig(_Section):
    enabled: bool = True
    addr: str = ":9090"
    auth_token: str | None = None
    prometheus_path: str = "/metrics/prometheus"
    max_batch_size: int = 1000
    max_body_bytes: int = 32 * 1024 * 1024
    #: Spans one ``POST /v1/traces`` request may carry (``max_batch_size`` does not apply to OTLP).
    max_otlp_spans: int = 10_000
    #: Open connections at most; more are answered 503 and closed.
    max_connections: int = 1024
    #: A connection must send a request's complete headers within this of opening or of its last answer.
    read_header_timeout: str = "10s"
    #: A request body must arrive within this once its headers are in, else 408.
    read_body_timeout: str = "60s"

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_body_bytes", "max_otlp_spans", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("read_header_timeout", "read_body_timeout"):
            try:
                parse_duration(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if not self.prometheus_path.startswith("/"):
            raise ValueError("prometheus_path must start with /")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ValueError(
                "http_server.auth_token is empty: set a token, or remove the key to serve without authentication"
            )


class StorageConfig(_Section):
    data_dir: str = "./data"
    retention: str = "30d"
    fine_retention: str = "48h"
    trace_retention: str = "7d"
    max_spans: int = 100_000
    snapshot_interval: str = "5m"

    def __post_init__(self) -> None:
        for name in ("retention", "fine_retention", "trace_retention", "snapshot_interval"):
            parse_duration(getattr(self, name))
        if self.max_spans < 1:
            raise ValueError("max_spans must be >= 1")


class AggregationConfig(_Section):
    bucket: str = "1m"
    max_attribute_keys: int = 32
    max_attribute_values: int = 100
    max_future_skew: str = "5m"
    #: Distinct models, providers and callers kept apart, and (model, provider, caller) series; the rest
    #: count under ``__overflow__`` (``tokentrace_folded_labels_total{label}``).
    max_models: int = 1000
    max_providers: int = 100
    max_callers: int = 1000
    max_series: int = 10_000

    def __post_init__(self) -> None:
        parse_duration(self.bucket)
        parse_duration(self.max_future_skew)
        for name in (
            "max_attribute_keys",
            "max_attribute_values",
            "max_models",
            "max_providers",
            "max_callers",
            "max_series",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


class PriceOverride(_Section):
    """USD per million tokens."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None


class KafkaConfig(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "tokentrace.spans"
    partitions: int = 4
    replication_factor: int = 1
    #: The workers' consumer group and table namespace: one per deployment.
    app_id: str = "tokentrace"
    #: Copy poison messages to this topic (created if missing); unset: only log and count them.
    dead_letter_topic: str | None = None
    #: How long the group waits for a silent worker before moving its partitions to the others.
    session_timeout: str = "10s"

    def __post_init__(self) -> None:
        parse_duration(self.session_timeout)
        self.check_names()

    def check_names(self) -> None:
        """Raise ValueError naming the key unless the topic names and the app id are ones Kafka accepts
        (checked again after command-line flags override them)."""
        _check_kafka_name("kafka.topic", self.topic, _MAX_TOPIC)
        if self.dead_letter_topic is not None:
            _check_kafka_name("kafka.dead_letter_topic", self.dead_letter_topic, _MAX_TOPIC)
        _check_kafka_name("kafka.app_id", self.app_id, _MAX_APP_ID)


def _check_kafka_name(key: str, name: str, max_length: int) -> None:
    if not _KAFKA_NAME.fullmatch(name) or name in (".", "..") or len(name) > max_length:
        raise ValueError(
            f"{key} must be 1 to {max_length} ASCII letters, digits, '.', '_' or '-' (a Kafka topic name), got {name!r}"
        )


class RedisConfig(_Section):
    url: str = "redis://127.0.0.1:6379/0"


class AlertingConfig(_Section):
    interval: str = "15s"
    #: This deployment's API as users reach it (linked from Alertmanager); default: the listen address.
    external_url: str | None = None

    def __post_init__(self) -> None:
        parse_duration(self.interval)


class Config(_Section):
    http_server: HTTPServerConfig = msgspec.field(default_factory=HTTPServerConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    aggregation: AggregationConfig = msgspec.field(default_factory=AggregationConfig)
    prices: dict[str, PriceOverride] = {}
    alerting: AlertingConfig = msgspec.field(default_factory=AlertingConfig)
    alerts: list[dict[str, Any]] = []
    kafka: KafkaConfig = msgspec.field(default_factory=KafkaConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)


def _expand(value: Any, path: str = "") -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string; ``path`` names the key in errors."""
    if isinstance(value, str):
        whole = _ENV.fullmatch(value)
        if whole is not None and whole.group(2) == "" and not os.environ.get(whole.group(1)):
            return None  # exactly ``${VAR:-}``: an optional variable, unset or empty, leaves the key unset

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if default is not None:  # shell semantics: ``:-`` also covers a variable set to ""
                return os.environ.get(name) or default
            if name not in os.environ:
                raise ConfigError(
                    f"environment variable {name} is not set (used by {path or 'the top level'}); set it, or "
                    f"write ${{{name}:-default}} to give a default"
                )
            return os.environ[name]

        return _ENV.sub(substitute, value)
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    return value


def parse_config(text: str, source: str = "tokentrace.yml") -> Config:
    """Parse YAML text into a Config; ConfigError says which key is wrong."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    try:
        expanded = _expand(raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        config = msgspec.convert(expanded, Config, strict=False)
        rules_from_config(config.alerts)  # validated now so a bad rule stops start-up with its index
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config


def load_config(path: Path | None) -> Config:
    """Load ``path`` (or defaults when None)."""
    if path is None:
        return Config()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse_config(text, str(path))
