"""A real ``redis-server`` for tests, on a free loopback port with its own temp dir.

No persistence by default (``--save "" --appendonly no``): a restart starts empty. With
``persistence=True`` the server keeps an append-only file fsynced on every write, so data survives
``kill()`` + ``restart()``. ``python -m tests.infra.redis`` runs one in the foreground.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from tests.infra.procs import InfraError, ServerProcess, free_ports, serve_until_signalled, wait_for

__all__ = ["RedisServer"]


def _redis_server() -> str:
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if found is None:
        raise InfraError("no `redis-server` found: install Debian's `redis-server` or run scripts/install-test-deps")
    return found


class RedisServer:
    """One ``redis-server`` process. ``start()`` waits until it answers PING; ``stop()`` deletes its dir."""

    def __init__(self, *, persistence: bool = False, startup_timeout: float = 20.0) -> None:
        self.persistence = persistence
        self.startup_timeout = startup_timeout
        self.port = free_ports(1)[0]
        self.host = "127.0.0.1"
        self.dir: Path | None = None
        self._process: ServerProcess | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def process(self) -> ServerProcess:
        """The server process (after ``start()``)."""
        if self._process is None:
            raise InfraError("redis server not started")
        return self._process

    def client(self, **kwargs: object) -> redis.Redis:
        """A new synchronous client for this server (``decode_responses`` etc. pass through)."""
        return redis.Redis(host=self.host, port=self.port, **kwargs)  # type: ignore[arg-type]

    def start(self) -> Self:
        """Start the server and wait until it answers."""
        binary = _redis_server()
        self.dir = Path(tempfile.mkdtemp(prefix="tokentrace-redis-"))
        argv = [binary, "--port", str(self.port), "--bind", self.host, "--dir", str(self.dir)]
        argv += ["--daemonize", "no", "--protected-mode", "yes", "--logfile", "", "--save", ""]
        if self.persistence:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        self._process = ServerProcess(f"redis-server :{self.port}", argv, self.dir / "redis.log", cwd=self.dir)
        try:
            self._process.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the server answers PING (and has loaded its data)."""
        wait_for(
            self._pings,
            timeout=timeout or self.startup_timeout,
            what=f"redis-server on port {self.port}",
            procs=[self.process],
            interval=0.02,
        )

    def _pings(self) -> bool:
        try:
            with self.client(socket_timeout=1.0) as conn:
                return bool(conn.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (no shutdown save)."""
        self.process.kill()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM, SIGKILL after ``timeout`` s), keeping its data dir."""
        self.process.stop(timeout)

    def restart(self) -> None:
        """Start a stopped or killed server again on the same port and dir, and wait until it answers."""
        if self.process.running:
            raise InfraError("redis-server is still running; kill() or shutdown() it first")
        self.process.start()
        self.wait_ready()

    def stop(self) -> None:
        """Stop the server and delete its dir. Idempotent."""
        if self._process is not None:
            self._process.stop(10.0)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


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
