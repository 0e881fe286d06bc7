"""lag_by_partition: the messages of each partition the view has not counted yet."""

from __future__ import annotations

from tokentrace.api.stores.topic_lag import lag_by_partition


def test_lag_is_the_messages_after_the_last_counted_one() -> None:
    ends = {0: 10, 1: 5, 2: 0, 3: 7}
    counted_through = {0: 9, 1: 2}  # partition 0 fully counted, 1 through offset 2; 2 and 3 nothing yet
    assert lag_by_partition(ends, counted_through) == {0: 0, 1: 2, 2: 0, 3: 7}


def test_older_end_offsets_never_make_a_negative_lag() -> None:
    assert lag_by_partition({0: 4}, {0: 9}) == {0: 0}
