"""The pure core: spans, aggregates, timelines, metrics, alert rules and codecs, with no I/O.

Shared by the SDK (``tokentrace.producers``), the workers and the API; it imports none of them. ``native``
says whether the compiled hot path (``tokentrace._native``) is in use.
"""
