"""tokentrace.yml: spec keys, env expansion, clear errors for unknown keys and bad values."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from tokentrace.config import (
    ENV_ALIASES,
    Config,
    ConfigError,
    environment_keys,
    environment_overrides,
    load_config,
    load_settings,
    parse_config,
)


def test_defaults_match_the_spec() -> None:
    config = parse_config("")
    assert config.http_server.addr == ":9090"
    assert config.http_server.prometheus_path == "/metrics/prometheus"
    assert config.http_server.max_batch_size == 1000
    assert config.storage.retention == "30d"


def test_spec_003_example_parses_with_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENTRACE_API_TOKEN", "abc")
    config = parse_config(
        'http_server:\n  enabled: true\n  addr: ":9090"\n  prometheus_path: /metrics/prometheus\n'
        '  auth_token: "${TOKENTRACE_API_TOKEN}"\n'
    )
    assert config.http_server.auth_token == "abc"


def test_env_default_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TT_ADDR", raising=False)
    assert parse_config('http_server:\n  addr: "${TT_ADDR:-127.0.0.1:7000}"\n').http_server.addr == "127.0.0.1:7000"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("http_server:\n  adr: x\n", "adr"),
        ("nonsense: 1\n", "nonsense"),
        ("http_server:\n  max_batch_size: 0\n", "max_batch_size"),
        ("http_server:\n  max_batch_size: many\n", "max_batch_size"),
        ("storage:\n  retention: forever\n", "forever"),
        ("prices:\n  m:\n    input: 1\n", "output"),
        ("- a\n- b\n", "mapping"),
        ("http_server: [\n", "YAML"),
        ("kafka:\n  topic: 'spans of team a'\n", "kafka.topic"),
        ("kafka:\n  dead_letter_topic: 'poison/1'\n", "kafka.dead_letter_topic"),
        ("kafka:\n  app_id: 'team:a'\n", "kafka.app_id"),
        (f"kafka:\n  app_id: {'a' * 201}\n", "kafka.app_id"),
        ("http_server:\n  max_connections: 0\n", "max_connections"),
        ("http_server:\n  max_otlp_spans: 0\n", "max_otlp_spans"),
        ("http_server:\n  read_header_timeout: 0s\n", "read_header_timeout"),
        ("http_server:\n  read_body_timeout: soon\n", "soon"),
        ("aggregation:\n  max_models: 0\n", "max_models"),
        ("aggregation:\n  max_series: -1\n", "max_series"),
    ],
)
def test_errors_name_the_key(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert fragment in str(raised.value)


def test_unset_variable_without_default_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's ``auth_token: "${TOKENTRACE_API_TOKEN}"`` with the variable unset must not mean "no auth"."""
    monkeypatch.delenv("TT_UNSET_TOKEN", raising=False)
    with pytest.raises(ConfigError) as raised:
        parse_config('http_server:\n  auth_token: "${TT_UNSET_TOKEN}"\n')
    assert "TT_UNSET_TOKEN" in str(raised.value)
    assert "http_server.auth_token" in str(raised.value)


@pytest.mark.parametrize("text", ['http_server:\n  auth_token: ""\n', 'http_server:\n  auth_token: "${TT_EMPTY}"\n'])
def test_empty_auth_token_is_an_error(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TT_EMPTY", "")
    with pytest.raises(ConfigError, match="auth_token"):
        parse_config(text)


def test_auth_off_only_when_the_token_is_absent_or_explicitly_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TT_UNSET_TOKEN", raising=False)
    assert parse_config("").http_server.auth_token is None
    assert parse_config("http_server:\n  auth_token: null\n").http_server.auth_token is None
    # ${VAR:-} declares the variable optional: unset or empty leaves the key unset.
    assert parse_config("http_server:\n  auth_token: ${TT_UNSET_TOKEN:-}\n").http_server.auth_token is None
    monkeypatch.setenv("TT_UNSET_TOKEN", "t0k")
    assert parse_config("http_server:\n  auth_token: ${TT_UNSET_TOKEN:-}\n").http_server.auth_token == "t0k"


def test_unset_variable_in_a_list_names_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TT_HOOK_SECRET", raising=False)
    text = "alerts:\n  - name: a\n    delivery: {type: http, url: 'http://h', secret: '${TT_HOOK_SECRET}'}\n"
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert "TT_HOOK_SECRET" in str(raised.value) and "alerts[0].delivery.secret" in str(raised.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yml")


def test_kafka_names_kafka_accepts_pass() -> None:
    kafka = parse_config("kafka:\n  topic: team-a.spans_v2\n  app_id: team-a.workers\n  dead_letter_topic: dlq\n").kafka
    assert (kafka.topic, kafka.app_id, kafka.dead_letter_topic) == ("team-a.spans_v2", "team-a.workers", "dlq")


def test_readme_tokentrace_yml_parses_and_states_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's ``tokentrace.yml`` block: every key exists, and its values are the defaults it documents."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("### tokentrace.yml", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("TOKENTRACE_API_TOKEN", "t")
    documented = msgspec.to_builtins(parse_config(block))
    defaults = msgspec.to_builtins(Config())
    for section in ("http_server", "storage", "aggregation"):
        for key, value in documented[section].items():
            if key != "auth_token":
                assert value == defaults[section][key], f"{section}.{key}"


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    path = tmp_path / "tokentrace.yml"
    path.write_text("kafka:\n  partitions: 2\n  topic: from-file\nstorage:\n  max_spans: 7\n")
    environ = {"TOKENTRACE_KAFKA_PARTITIONS": "8", "TOKENTRACE_STORAGE_MAX_SPANS": "9"}
    config = load_settings(path, {"storage.max_spans": ("--max-spans", 11), "kafka.topic": ("--topic", None)}, environ)
    assert config.kafka.partitions == 8  # the variable, converted to the key's type
    assert config.storage.max_spans == 11  # the flag
    assert config.kafka.topic == "from-file"  # a flag not given (None) leaves the file's value
    assert load_settings(path, environ={}).kafka.partitions == 2


def test_every_scalar_key_has_its_variable() -> None:
    keys = environment_keys()
    defaults = msgspec.to_builtins(Config())
    expected = {
        f"TOKENTRACE_{section}_{key}".upper(): f"{section}.{key}"
        for section, values in defaults.items()
        if isinstance(values, dict) and section != "prices"
        for key in values
    }
    assert keys == expected
    assert keys["TOKENTRACE_HTTP_SERVER_ADDR"] == "http_server.addr"
    assert keys["TOKENTRACE_KAFKA_BOOTSTRAP_SERVERS"] == "kafka.bootstrap_servers"


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"TOKENTRACE_KAFKA_PARTITIONS": "many"}, "TOKENTRACE_KAFKA_PARTITIONS"),
        ({"TOKENTRACE_KAFKA_PARTITIONS": "0"}, "partitions must be >= 1"),
        ({"TOKENTRACE_STORAGE_MAX_SPANS": "0"}, "TOKENTRACE_STORAGE_MAX_SPANS"),
        ({"TOKENTRACE_KAFKA_TOPIC": "a topic"}, "got 'a topic'"),
        ({"TOKENTRACE_APP_ID": "team:a"}, "TOKENTRACE_APP_ID"),
        ({"TOKENTRACE_HTTP_SERVER_READ_BODY_TIMEOUT": "soon"}, "TOKENTRACE_HTTP_SERVER_READ_BODY_TIMEOUT"),
    ],
)
def test_a_bad_variable_is_an_error_naming_it(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(None, environ=environ)


def test_older_variable_names_still_work_and_the_systematic_name_wins() -> None:
    assert set(ENV_ALIASES.values()) <= set(environment_keys().values())
    assert load_settings(None, environ={"TOKENTRACE_APP_ID": "old"}).kafka.app_id == "old"
    both = {"TOKENTRACE_APP_ID": "old", "TOKENTRACE_KAFKA_APP_ID": "new"}
    assert load_settings(None, environ=both).kafka.app_id == "new"
    dead = load_settings(None, environ={"TOKENTRACE_DEAD_LETTER_TOPIC": "poison"}).kafka.dead_letter_topic
    assert dead == "poison"


def test_empty_and_unrelated_variables_change_nothing() -> None:
    environ = {"TOKENTRACE_KAFKA_TOPIC": "", "TOKENTRACE_API_TOKEN": "t", "TOKENTRACE_NATIVE": "0"}
    assert environment_overrides(environ) == {}
    assert load_settings(None, environ=environ) == Config()


def test_flag_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="--max-spans"):
        load_settings(None, {"storage.max_spans": ("--max-spans", 0)}, environ={})


def test_readme_names_only_variables_that_exist() -> None:
    """The environment variables the README's tokentrace.yml section names are keys, older names or the two
    command options, so the documentation cannot drift from the settings module."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### tokentrace.yml", 1)[1].split("\n### ", 1)[0]
    named = set(re.findall(r"TOKENTRACE_[A-Z_]+[A-Z]", section)) - {"TOKENTRACE_API_TOKEN"}
    known = set(environment_keys()) | set(ENV_ALIASES) | {"TOKENTRACE_REDIS_PREFIX", "TOKENTRACE_FETCH_BYTES"}
    assert named and named <= known, named - known
