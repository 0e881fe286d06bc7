"""The compiled code reads a span's fields from the slots msgspec keeps them in (native/src/slots.rs), found once
on a sample span: every read must be the very object ``getattr`` returns, and anything else than a ``Span``
(another class, a field it does not know, an unset slot) is read by ``getattr``."""

from __future__ import annotations

import string
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.test_native import REQUIRED
from tokentrace.core import native
from tokentrace.core.span import SLOTS_FOUND, Span
from tokentrace.core.timefmt import format_ms

NAME = string.ascii_letters + "-. "
pytestmark = [] if REQUIRED else [pytest.mark.skipif(native.span_field is None, reason="compiled module not built")]


def test_the_layout_of_a_span_is_found() -> None:
    assert SLOTS_FOUND, (
        f"msgspec {msgspec.__version__}: where a Struct keeps its fields was not found (native/src/slots.rs); "
        "the compiled code reads spans by getattr, slower"
    )


@given(
    st.builds(
        Span,
        model=st.text(NAME, min_size=1, max_size=20),
        provider=st.text(NAME, max_size=10),
        caller=st.text(NAME, max_size=10),
        prompt_tokens=st.one_of(st.none(), st.integers(0, 10**6)),
        comp_tokens=st.integers(0, 10**6),
        latency_ms=st.one_of(st.none(), st.floats(0, 1e6)),
        status=st.sampled_from(["ok", "error", "timeout"]),
        started_at=st.one_of(st.none(), st.integers(0, 2**41).map(format_ms)),
        attributes=st.dictionaries(st.text(NAME, max_size=5), st.one_of(st.integers(0, 9), st.text(max_size=5))),
    )
)
@settings(max_examples=200)
def test_every_field_read_is_the_object_getattr_returns(span: Span) -> None:
    assert native.span_field is not None
    for name in Span.__struct_fields__:
        assert native.span_field(span, name) is getattr(span, name)


def test_another_class_an_unknown_field_and_an_unset_slot_are_read_by_getattr() -> None:
    assert native.span_field is not None

    class Other:
        model = "other"

    assert native.span_field(Other(), "model") == "other"
    span = Span(model="m", prompt_tokens=1)
    assert native.span_field(span, "score") is None  # a property, not a field
    del span.error
    with pytest.raises(AttributeError):
        native.span_field(span, "error")

    class Spanlike(Span):
        extra: int = 5

    sub: Any = Spanlike(model="s", prompt_tokens=2)
    assert [native.span_field(sub, name) for name in ("model", "extra")] == ["s", 5]
