"""``tokentrace.yml``: the settings of every ``tokentrace`` command, and the one place their defaults live.

The keys are the product's configuration contract (README, "tokentrace.yml": ``http_server.addr``,
``http_server.auth_token``, ``prometheus_path``, ``max_batch_size``, ...). ``${VAR}`` and ``${VAR:-default}``
are expanded from the environment. An unknown key or a bad value is an error that names it
(``unknown field `adr` - at `$.http_server```).

Precedence, lowest first: these defaults, the file, ``TOKENTRACE_<SECTION>_<KEY>`` environment variables
(``environment_overrides``; every command applies them, ``serve`` included), then command-line flags
(``with_overrides``). Overrides are validated like the file, and an error names the variable or flag.

Nothing fails open: ``${VAR}`` with VAR unset is an error naming VAR and the key (``auth_token:
"${TOKENTRACE_API_TOKEN}"`` must never quietly become "no token"), and an empty ``auth_token`` is an error,
not "authentication off". A value that is exactly ``${VAR:-}`` declares the variable optional: unset or
empty, the key is left unset (null), which is how the compose stack makes its token optional.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import yaml

from tokentrace.core.alerts.rules import rules_from_config
from tokentrace.core.buckets import Caps
from tokentrace.core.codec import SPAN_TOPIC
from tokentrace.core.timefmt import parse_duration
from tokentrace.core.timeline import TimelineSettings

if TYPE_CHECKING:
    from tokentrace.core.pricing import PriceTable

__all__ = [
    "ENV_ALIASES",
    "AggregationConfig",
    "AlertingConfig",
    "Config",
    "ConfigError",
    "HTTPServerConfig",
    "KafkaConfig",
    "PriceOverride",
    "RedisConfig",
    "StorageConfig",
    "environment_keys",
    "environment_overrides",
    "load_config",
    "load_settings",
    "milliseconds",
    "parse_config",
    "price_table",
    "timeline_settings",
    "with_overrides",
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

    @property
    def trace_retention_ms(self) -> int:
        """``trace_retention`` in milliseconds."""
        return milliseconds(self.trace_retention)


class AggregationConfig(_Section):
    bucket: str = "1m"
    max_attribute_keys: int = 32
    max_attribute_values: int = 100
    max_future_skew: str = "5m"
    #: Distinct models, providers and callers kept apart, and (model, provider, caller) series; the rest
    #: count under ``__overflow__`` (``tokentrace_folded_labels_total{label}``). Those are the API's caps (its
    #: ``LabelCaps``); ``max_series`` also caps the series of each bucket (``Caps.max_series``), which is what
    #: bounds spans the workers take straight from Kafka.
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
    topic: str = SPAN_TOPIC
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
        for name in ("partitions", "replication_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
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


def milliseconds(duration: str) -> int:
    """A duration of the configuration (``7d``, ``90s``) in whole milliseconds."""
    return round(parse_duration(duration) * 1000)


def timeline_settings(config: Config) -> TimelineSettings:
    """The aggregate timeline's settings (``storage`` retentions, ``aggregation`` bucket and caps): the same
    for the embedded store, the workers and the Redis view."""
    storage, aggregation = config.storage, config.aggregation
    return TimelineSettings(
        bucket_ms=milliseconds(aggregation.bucket),
        fine_retention_ms=milliseconds(storage.fine_retention),
        retention_ms=milliseconds(storage.retention),
        caps=Caps(aggregation.max_attribute_keys, aggregation.max_attribute_values, aggregation.max_series),
    )


def price_table(config: Config) -> PriceTable:
    """The bundled price table with the ``prices`` overrides of the configuration."""
    from tokentrace.core.pricing import PriceTable

    overrides = {
        model: {k: v for k, v in msgspec.structs.asdict(prices).items() if v is not None}
        for model, prices in config.prices.items()
    }
    return PriceTable(overrides=overrides)


#: Variable names from before ``TOKENTRACE_<SECTION>_<KEY>``, still read (the systematic name wins).
ENV_ALIASES: Mapping[str, str] = {
    "TOKENTRACE_APP_ID": "kafka.app_id",
    "TOKENTRACE_DEAD_LETTER_TOPIC": "kafka.dead_letter_topic",
}


def environment_keys() -> dict[str, str]:
    """``TOKENTRACE_<SECTION>_<KEY>`` -> ``section.key`` for every scalar key of every section
    (``TOKENTRACE_KAFKA_BOOTSTRAP_SERVERS`` -> ``kafka.bootstrap_servers``); ``prices`` and ``alerts``
    are lists and maps, set in the file only."""
    keys: dict[str, str] = {}
    for section in msgspec.structs.fields(Config):
        if not (isinstance(section.type, type) and issubclass(section.type, _Section)):
            continue
        for field in msgspec.structs.fields(section.type):
            keys[f"TOKENTRACE_{section.name}_{field.name}".upper()] = f"{section.name}.{field.name}"
    return keys


def environment_overrides(environ: Mapping[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """The keys the environment sets: ``section.key`` -> (variable, value). A variable set to "" counts as
    unset, as it did for the flags' variables."""
    environ = os.environ if environ is None else environ
    found: dict[str, tuple[str, str]] = {}
    for variable, key in [*ENV_ALIASES.items(), *environment_keys().items()]:  # systematic names last: they win
        value = environ.get(variable)
        if value:
            found[key] = (variable, value)
    return found


def with_overrides(config: Config, overrides: Mapping[str, tuple[str, object]]) -> Config:
    """``config`` with ``section.key`` -> (source, value) applied in order and validated like the file
    (strings are converted: ``"4"`` for an int key); ConfigError names the source (a variable or flag)."""
    for key, (source, value) in overrides.items():
        section, _, name = key.partition(".")
        raw = msgspec.to_builtins(config)
        if not isinstance(raw.get(section), dict) or name not in raw[section]:
            raise ConfigError(f"{source}: no such setting {key}")
        raw[section][name] = value
        try:
            config = msgspec.convert(raw, Config, strict=False)
        except (msgspec.ValidationError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return config


def load_settings(
    path: Path | None,
    flags: Mapping[str, tuple[str, object]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """What a command runs with: ``path`` (or the defaults), then ``TOKENTRACE_*`` variables, then ``flags``
    (``section.key`` -> (flag, value); a None value is a flag not given)."""
    config = with_overrides(load_config(path), environment_overrides(environ))
    given = {key: (flag, value) for key, (flag, value) in (flags or {}).items() if value is not None}
    return with_overrides(config, given)
