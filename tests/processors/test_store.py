"""The worker's table store restores each key's newest version, whatever order the changelog has."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tokentrace.core.buckets import BucketState
from tokentrace.processors.store import MonotonicStore
from tokentrace.view.schema import BucketEntry, decode_entry, encode_entry


def _event(key: bytes, value: bytes | None) -> Any:
    return SimpleNamespace(key=key, value=value, message=SimpleNamespace(partition=0, value=value))


def test_a_late_older_version_does_not_replace_a_newer_one_and_deletions_apply() -> None:
    store = MonotonicStore.__new__(MonotonicStore)  # only the restore logic: no app needed
    store.data, store._key_partition = {}, {}
    newer, older = encode_entry(BucketEntry(9, BucketState())), encode_entry(BucketEntry(4, BucketState()))
    batch = [_event(b"0:1", newer), _event(b"0:1", older), _event(b"0:2", older), _event(b"0:2", None)]
    store.apply_changelog_batch(batch, lambda k: k, lambda v: decode_entry(v))
    assert store.data == {b"0:1": BucketEntry(9, BucketState())}
