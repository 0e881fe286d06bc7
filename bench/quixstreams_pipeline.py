"""The quixstreams comparison of bench/processor_throughput.py: the worker's aggregation as a quixstreams app.

A quixstreams ``Application`` (its own consumer group, ``auto_offset_reset="earliest"``) reads the raw wire
messages of the span topic and applies each one with the worker's own ``Applier.apply``
(processors/state.py), one message at a time as the worker does: the same ``decode_wire``, the same
stamping, bounds and pricing, the same ``BucketState`` additions into per (partition, minute bucket)
entries, plus the partition's meta counters. What differs from ``tokentrace worker`` is the framework, the
state store and the commit path, and that this pipeline materializes nothing (the worker also writes the
Redis view and the trace index):

* state: quixstreams' RocksDB ``State`` of a ``sdf.update(..., stateful=True)`` function. quixstreams scopes
  state by message key; the span topic's keys are the first span's trace id (they only spread traces over
  partitions), so the key deserializer reads every key as ``b""`` and the partition's state is one namespace
  holding the worker's entries under the worker's keys (``b"<partition>:<bucket start ms>"``,
  ``b"<partition>:meta"``). Re-keying with ``group_by`` instead would add a repartition topic, a produce and a
  consume per message, which the worker does not do. Entries are stored encoded (``encode_entry``, msgpack)
  with ``state.set_bytes``; each message reads the entries it touches with ``state.get_bytes`` and writes
  back the ones it changed, which is how a quixstreams function keeps state (the framework caches the bytes
  until the checkpoint);
* commits: quixstreams checkpoints every ``--commit-interval`` seconds (its default, 5 s): the changelog
  topic records of the changed keys, the RocksDB write batch and the consumer offsets, in one Kafka
  transaction with ``--guarantee exactly-once`` (the default here), or flushed then committed with
  ``at-least-once``.

The rate is measured from the end of the first processed message to the message that brings the spans
counted in state (the meta entries' ``spans``) to ``--expect``, when the function calls ``app.stop()``;
start-up, the consumer group join and the final checkpoint are outside it (reported separately). Each message
loads its entries from state afresh, so these counts have been through the store; the series counts of the
bucket entries as last written must add up to ``--expect`` too.

Run (bench/processor_throughput.py starts it in a subprocess, one process like one worker)::

    .venv/bin/python bench/quixstreams_pipeline.py --bootstrap 127.0.0.1:9092 --topic spans --expect 200000

It prints one JSON object on stdout and exits 1 if it did not count exactly ``--expect`` spans. quixstreams is
in the ``bench`` extra: ``.venv/bin/pip install -e '.[dev,bench]'``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

from quixstreams import Application, State, message_context
from quixstreams.models.serializers import Deserializer, SerializationContext

from tokentrace.api.embedded import embedded_settings, price_table
from tokentrace.config import Config
from tokentrace.core.timefmt import parse_duration
from tokentrace.processors.state import Applier
from tokentrace.view.schema import BucketEntry, Entry, PartitionMeta, decode_entry, encode_entry


class OnePrefix(Deserializer):
    """Reads every message key as ``b""``: a partition's state is one namespace, keyed by bucket."""

    def __init__(self) -> None:  # the base class's does nothing and is untyped
        pass

    def __call__(self, value: bytes, ctx: SerializationContext) -> bytes:
        return b""


class StateEntries(MutableMapping[bytes, Entry]):
    """A partition's entries as ``Applier.apply`` sees them, read from a quixstreams ``State`` on first use.

    ``apply`` changes entries in place; ``write`` stores the ones it reports dirty, encoded, back in state.
    """

    def __init__(self, state: State[bytes, bytes]) -> None:
        self._state = state
        self._loaded: dict[bytes, Entry | None] = {}

    def __getitem__(self, key: bytes) -> Entry:
        try:
            entry = self._loaded[key]
        except KeyError:
            raw = self._state.get_bytes(key)
            entry = self._loaded[key] = None if raw is None else decode_entry(raw)
        if entry is None:
            raise KeyError(key)
        return entry

    def __setitem__(self, key: bytes, entry: Entry) -> None:
        self._loaded[key] = entry

    def __delitem__(self, key: bytes) -> None:
        raise NotImplementedError("Applier.apply never deletes entries")

    def __iter__(self) -> Iterator[bytes]:
        return (key for key, entry in self._loaded.items() if entry is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def write(self, keys: Iterable[bytes]) -> None:
        for key in dict.fromkeys(keys):
            self._state.set_bytes(key, encode_entry(self[key]))


@dataclass
class Progress:
    """What the app has counted, from the entries it wrote to state."""

    expect: int
    messages: int = 0
    #: ``PartitionMeta.spans`` of each partition as last written.
    spans: dict[int, int] = field(default_factory=dict)
    #: Sum of the series counts of each bucket entry as last written.
    buckets: dict[bytes, int] = field(default_factory=dict)
    first_at: float | None = None
    first_spans: int = 0
    last_at: float | None = None
    #: Seconds in ``Applier.apply`` (its state reads included) and in writing the changed entries back.
    apply_s: float = 0.0
    write_s: float = 0.0

    @property
    def counted(self) -> int:
        return sum(self.spans.values())


def build(args: argparse.Namespace, progress: Progress) -> Application:
    """The quixstreams app: one stateful ``update`` applying each message like the worker does."""
    config = Config()  # the worker's defaults, as ``WorkerSettings.from_config`` derives them
    max_future_ms = round(parse_duration(config.aggregation.max_future_skew) * 1000)
    applier = Applier(embedded_settings(config).timeline, price_table(config), max_future_ms)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group or f"quixstreams-{args.topic}",
        auto_offset_reset="earliest",
        processing_guarantee=args.guarantee,
        commit_interval=args.commit_interval,
        state_dir=args.state_dir,
        loglevel="INFO",
    )
    topic = app.topic(args.topic, key_deserializer=OnePrefix(), value_deserializer="bytes")

    def aggregate(value: bytes, key: bytes, timestamp: int, headers: Any, state: State[bytes, bytes]) -> None:
        began = time.perf_counter()
        context = message_context()
        entries = StateEntries(state)
        applied = applier.apply(entries, context.partition, context.offset, timestamp, value)
        applied_at = time.perf_counter()
        entries.write(applied.dirty)
        progress.apply_s += applied_at - began
        progress.write_s += time.perf_counter() - applied_at
        for dirty in applied.dirty:
            entry = entries[dirty]
            if isinstance(entry, PartitionMeta):
                progress.spans[context.partition] = entry.spans
            elif isinstance(entry, BucketEntry):
                progress.buckets[dirty] = sum(a.count for a in entry.state.series.values())
        progress.messages += 1
        if progress.first_at is None:
            progress.first_at = time.perf_counter()
            progress.first_spans = progress.counted
        if progress.counted >= progress.expect and progress.last_at is None:
            progress.last_at = time.perf_counter()
            app.stop()

    app.dataframe(topic).update(aggregate, stateful=True, metadata=True)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expect", type=int, required=True, help="spans on the topic: stop once all are counted")
    parser.add_argument("--group", help="consumer group (default quixstreams-TOPIC)")
    parser.add_argument("--guarantee", choices=("exactly-once", "at-least-once"), default="exactly-once")
    parser.add_argument("--commit-interval", type=float, default=5.0, help="seconds (quixstreams' default: 5)")
    parser.add_argument("--state-dir", help="RocksDB state (default: a temporary folder, removed at the end)")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")
    args = parser.parse_args()
    temporary = args.state_dir is None
    if temporary:
        args.state_dir = tempfile.mkdtemp(prefix="tokentrace-quixstreams-")
    progress = Progress(args.expect)
    try:
        app = build(args, progress)
        watchdog = threading.Timer(args.timeout, app.stop)
        watchdog.daemon = True
        began = time.perf_counter()
        watchdog.start()
        app.run()
        ended = time.perf_counter()
        watchdog.cancel()
    finally:
        if temporary:
            shutil.rmtree(args.state_dir, ignore_errors=True)
    first, last = progress.first_at, progress.last_at
    rate = (progress.counted - progress.first_spans) / (last - first) if first and last and last > first else 0.0
    result = {
        "spans": progress.counted,
        "bucket_spans": sum(progress.buckets.values()),
        "messages": progress.messages,
        "rate": rate,
        "startup_s": (first - began) if first else None,
        "processing_s": (last - first) if first and last else None,
        "shutdown_s": (ended - last) if last else None,
        "apply_s": progress.apply_s,
        "write_s": progress.write_s,
        "guarantee": args.guarantee,
        "commit_interval_s": args.commit_interval,
        "quixstreams": version("quixstreams"),
    }
    print(json.dumps(result), flush=True)
    exact = progress.counted == args.expect and result["bucket_spans"] == args.expect
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
