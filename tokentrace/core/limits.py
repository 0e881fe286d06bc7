"""Length caps on a span's text: what one span may make the server hold, render and store.

Without them one span with a 10 MB model name became a 10 MB label in every Prometheus family, every
bucket and the trace index (a 160 MB exposition). Every ingest path checks them after decoding
(``core.ingest`` answers 400 naming the field; the OTLP converter skips the span as ``invalid``), before
anything is stored. The caps are far above real values: model names are tens of characters, OpenTelemetry
SDKs keep at most 128 attributes per span by default, and ids are 32 to 36 characters.
"""

from __future__ import annotations

from typing import Final

from tokentrace.core.span import Span

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTES_CHARS",
    "MAX_ATTRIBUTE_KEY_CHARS",
    "MAX_ATTRIBUTE_VALUE_CHARS",
    "MAX_ERROR_CHARS",
    "MAX_ID_CHARS",
    "MAX_LABEL_CHARS",
    "MAX_NAME_CHARS",
    "text_limit_error",
]

#: ``model``, ``provider``, ``caller``: Prometheus labels and group names.
MAX_LABEL_CHARS: Final = 256
#: ``name`` (the step or operation).
MAX_NAME_CHARS: Final = 1024
#: ``trace_id``, ``span_id``, ``parent_span_id``.
MAX_ID_CHARS: Final = 256
#: ``error`` (the error type and message).
MAX_ERROR_CHARS: Final = 16384
#: Attributes per span (OpenTelemetry's default span attribute count limit).
MAX_ATTRIBUTES: Final = 128
#: An attribute key (a ``groupby`` name).
MAX_ATTRIBUTE_KEY_CHARS: Final = 256
#: A string attribute value (a group name).
MAX_ATTRIBUTE_VALUE_CHARS: Final = 4096
#: All attribute keys and string values of a span together: what one span may hold in the trace index.
MAX_ATTRIBUTES_CHARS: Final = 32768

_SMALLEST: Final = min(MAX_LABEL_CHARS, MAX_ID_CHARS)


def _too_long(field: str, text: str, limit: int) -> str:
    return f"{field} is {len(text)} characters long; at most {limit} are accepted"


def text_limit_error(span: Span) -> str | None:
    """What of ``span`` is over its cap (naming the field), or None when everything fits."""
    model, provider, caller, trace_id, span_id = span.model, span.provider, span.caller, span.trace_id, span.span_id
    if max(len(model), len(provider), len(caller), len(trace_id), len(span_id)) > _SMALLEST:
        for field, text, limit in (
            ("model", model, MAX_LABEL_CHARS),
            ("provider", provider, MAX_LABEL_CHARS),
            ("caller", caller, MAX_LABEL_CHARS),
            ("trace_id", trace_id, MAX_ID_CHARS),
            ("span_id", span_id, MAX_ID_CHARS),
        ):
            if len(text) > limit:
                return _too_long(field, text, limit)
    if span.parent_span_id is not None and len(span.parent_span_id) > MAX_ID_CHARS:
        return _too_long("parent_span_id", span.parent_span_id, MAX_ID_CHARS)
    if len(span.name) > MAX_NAME_CHARS:
        return _too_long("name", span.name, MAX_NAME_CHARS)
    if span.error is not None and len(span.error) > MAX_ERROR_CHARS:
        return _too_long("error", span.error, MAX_ERROR_CHARS)
    attributes = span.attributes
    if attributes:
        if len(attributes) > MAX_ATTRIBUTES:
            return f"attributes has {len(attributes)} keys; at most {MAX_ATTRIBUTES} are accepted"
        chars = 0
        for key, value in attributes.items():
            chars += len(key) + (len(value) if type(value) is str else 0)
            if len(key) > MAX_ATTRIBUTE_KEY_CHARS:
                return (
                    f"attributes: a key is {len(key)} characters long; at most {MAX_ATTRIBUTE_KEY_CHARS} are accepted"
                )
            if type(value) is str and len(value) > MAX_ATTRIBUTE_VALUE_CHARS:
                return _too_long(f"attributes.{key}", value, MAX_ATTRIBUTE_VALUE_CHARS)
        if chars > MAX_ATTRIBUTES_CHARS:
            return f"attributes hold {chars} characters of keys and text; at most {MAX_ATTRIBUTES_CHARS} are accepted"
    return None
