"""The API benchmarks' helpers under their first name: they live in ``benchkit.server`` now (bench/benchkit, the
one helper package of bench/). Kept so scripts importing ``apibench`` keep working until they import benchkit."""

from __future__ import annotations

from benchkit.server import RESULTS, Server, append_results, machine, percentile

__all__ = ["RESULTS", "Server", "append_results", "machine", "percentile"]
