"""LabelCaps: distinct models, providers, callers and series stay within their caps; every fold is counted
and no span is lost (checked against a brute-force replay of the rules)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.core.buckets import OVERFLOW, SEP
from tokentrace.core.labels import FOLDED_ATTRIBUTE_PREFIX, LabelCaps, LabelLimits
from tokentrace.core.span import Span

names = st.sampled_from([f"v{i}" for i in range(12)])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(names, names, names), max_size=80),
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(1, 40),
)
def test_caps_hold_and_every_fold_is_counted(
    triples: list[tuple[str, str, str]], models: int, providers: int, callers: int, series: int
) -> None:
    caps = LabelCaps(LabelLimits(models, providers, callers, series))
    spans = [Span(model=m, provider=p, caller=c, total_tokens=1) for m, p, c in triples]
    caps.admit(spans[: len(spans) // 2])
    caps.admit(spans[len(spans) // 2 :])
    # The oracle: first come, first admitted, per label, then per series.
    seen: list[set[str]] = [set(), set(), set()]
    keys: set[str] = set()
    folded = {"model": 0, "provider": 0, "caller": 0, "series": 0}
    for (m, p, c), span in zip(triples, spans, strict=True):
        parts = [m, p, c]
        for i, (label, limit) in enumerate((("model", models), ("provider", providers), ("caller", callers))):
            if parts[i] not in seen[i]:
                if len(seen[i]) < limit:
                    seen[i].add(parts[i])
                else:
                    parts[i] = OVERFLOW
                    folded[label] += 1
        key = SEP.join(parts)
        if key not in keys:
            if len(keys) < series:
                keys.add(key)
            else:
                folded["series"] += 1
                parts = [OVERFLOW] * 3
                keys.add(SEP.join(parts))
        assert [span.model, span.provider, span.caller] == parts
        for label, original, now in zip(("model", "provider", "caller"), (m, p, c), parts, strict=True):
            assert span.attributes.get(FOLDED_ATTRIBUTE_PREFIX + label) == (original if now == OVERFLOW else None)
    assert {k: caps.folded[k] for k in folded} == folded
    assert len({s.model for s in spans} - {OVERFLOW}) <= models
    assert len({(s.model, s.provider, s.caller) for s in spans}) <= series + 1


def test_seeded_series_stay_admitted_past_the_caps() -> None:
    caps = LabelCaps(LabelLimits(1, 1, 1, 1))
    caps.seed([f"a{SEP}p{SEP}c", f"b{SEP}p{SEP}c"])
    spans = [Span(model="b", provider="p", caller="c", total_tokens=1), Span(model="z", total_tokens=1)]
    caps.admit(spans)
    assert (spans[0].model, spans[0].attributes) == ("b", {})
    assert spans[1].model == OVERFLOW and caps.folded["model"] == 1
