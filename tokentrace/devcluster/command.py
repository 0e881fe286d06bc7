"""Moved: ``tokentrace dev-cluster`` is ``tokentrace.cli.devcluster.dev_cluster``; this name is kept for imports."""

from tokentrace.cli.devcluster import dev_cluster

__all__ = ["dev_cluster"]
