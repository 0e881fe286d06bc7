"""A real ``redis-server`` for tests: ``tokentrace.devcluster.redis.RedisServer`` on a free loopback port.

No persistence by default (``--save "" --appendonly no``): a restart starts empty. With
``persistence=True`` the server keeps an append-only file fsynced on every write, so data survives
``kill()`` + ``restart()``. ``python -m tests.infra.redis [--persist]`` runs one in the foreground.
"""

from __future__ import annotations

import sys

from tests.infra.procs import InfraError, serve_until_signalled
from tokentrace.devcluster.redis import RedisServer

__all__ = ["RedisServer"]


def _main() -> int:
    try:
        with RedisServer(persistence="--persist" in sys.argv[1:]) as server:
            serve_until_signalled([server.url], server.process.check_alive)
        return 0
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_main())
