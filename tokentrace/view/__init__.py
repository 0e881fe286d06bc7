"""The Redis view of the distributed mode, in one place: the workers write it, the API replicas read it.

* ``schema``: the entries (per source partition and bucket, with the offset they counted through), their keys
  and their encoding, and ``STATE_SCHEMA``, the version of that layout.
* ``keys``: where they sit in Redis (``Keys``), the compare-and-set and retention scripts, the trace index.
* ``writer``: ``Materializer``, a worker's idempotent writer (``pipeline``: raw sends of the trace index).
* ``reader``: ``ViewReader``, a local ``Timeline`` kept up to date from the change feed, and the traces.

Imports only ``tokentrace.core`` (an import-linter contract in pyproject.toml).
"""
