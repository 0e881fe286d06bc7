"""``ProjectionMemo``: taken only at its stamp, bounded by entries and by groups, oldest dropped first."""

from __future__ import annotations

from tokentrace.core.aggregate import Aggregate
from tokentrace.core.buckets import Projection
from tokentrace.core.projection_memo import ProjectionMemo


def groups(n: int) -> Projection:
    return {f"g{i}": Aggregate() for i in range(n)}


def test_a_projection_is_taken_only_at_its_stamp() -> None:
    memo: ProjectionMemo[str, int] = ProjectionMemo(entries=4, groups=100)
    memo.put("a", 1, groups(2))
    assert memo.get("a", 1) == groups(2)
    assert memo.get("a", 2) is None and memo.get("b", 1) is None
    memo.put("a", 2, groups(3))  # in place of the first
    assert len(memo) == 1 and memo.groups == 3 and memo.get("a", 2) == groups(3)


def test_the_oldest_go_first_past_either_bound() -> None:
    memo: ProjectionMemo[int, int] = ProjectionMemo(entries=3, groups=10)
    for key in range(4):
        memo.put(key, 0, groups(1))
    assert [memo.get(key, 0) is not None for key in range(4)] == [False, True, True, True]  # entries
    memo.put(9, 0, groups(8))  # entries: 1 goes; then 2 + 8 groups fit
    assert len(memo) == 3 and memo.groups == 10
    memo.put(11, 0, groups(2))  # entries: 2 goes; groups: 3 goes too (8 + 1 + 2 > 10)
    assert [key for key in (2, 3, 9, 11) if memo.get(key, 0) is not None] == [9, 11] and memo.groups == 10
    memo.put(10, 0, groups(50))  # bigger than the bound alone: kept alone
    assert len(memo) == 1 and memo.groups == 50


def test_forget_and_clear_keep_the_group_count() -> None:
    memo: ProjectionMemo[int, int] = ProjectionMemo(entries=10, groups=100)
    for key in range(5):
        memo.put(key, 0, groups(key + 1))
    memo.forget(lambda key: key % 2 == 0)
    assert len(memo) == 2 and memo.groups == 2 + 4
    memo.pop(1)
    assert memo.groups == 4
    memo.clear()
    assert len(memo) == 0 and memo.groups == 0
