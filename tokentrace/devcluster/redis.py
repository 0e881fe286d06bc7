"""A ``redis-server`` on loopback, in a temp dir removed on stop or in a kept ``data_dir``.

No persistence by default (``--save "" --appendonly no``): a restart starts empty. With
``persistence=True`` the server keeps an append-only file fsynced on every write, so data survives
``kill()`` + ``restart()``; a kept ``data_dir`` implies it. The port is a free one unless given.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Self

import redis

from tokentrace.devcluster.procs import (
    ChildServer,
    DevClusterError,
    ServerProcess,
    find_tool,
    free_ports,
    port_free,
    wait_for,
)

__all__ = ["RedisServer", "find_redis_server"]


def find_redis_server(path: str | None = None) -> str:
    """The ``redis-server`` executable, or an error naming the package that installs it."""
    return find_tool("redis-server", "redis-server", path=path)


class RedisServer(ChildServer):
    """One ``redis-server`` process. ``start()`` waits until it answers PING; ``stop()`` deletes a temp dir."""

    def __init__(
        self,
        *,
        persistence: bool = False,
        startup_timeout: float = 20.0,
        port: int | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.persistence = persistence or data_dir is not None
        self.startup_timeout = startup_timeout
        self.port = port if port is not None else free_ports(1)[0]
        self.host = "127.0.0.1"
        self.data_dir = data_dir
        self.dir: Path | None = None
        self._process: ServerProcess | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **kwargs: object) -> redis.Redis:
        """A new synchronous client for this server (``decode_responses`` etc. pass through)."""
        return redis.Redis(host=self.host, port=self.port, **kwargs)  # type: ignore[arg-type]

    def start(self) -> Self:
        """Start the server and wait until it answers."""
        binary = find_redis_server()
        if not port_free(self.port, self.host):
            raise DevClusterError(f"port {self.port} on {self.host} is in use: stop what listens there or pick another")
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.dir = self.data_dir
        else:
            self.dir = Path(tempfile.mkdtemp(prefix="tokentrace-redis-"))
        argv = [binary, "--port", str(self.port), "--bind", self.host, "--dir", str(self.dir)]
        argv += ["--daemonize", "no", "--protected-mode", "yes", "--logfile", "", "--save", ""]
        if self.persistence:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        process = ServerProcess(f"redis-server :{self.port}", argv, self.dir / "redis.log", cwd=self.dir)
        self._launch(process, self._pings, timeout=self.startup_timeout, what=self._what, interval=0.02)
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the server answers PING (and has loaded its data)."""
        wait_for(
            self._pings, timeout=timeout or self.startup_timeout, what=self._what, procs=[self.process], interval=0.02
        )

    @property
    def _what(self) -> str:
        return f"redis-server on port {self.port}"

    def _pings(self) -> bool:
        try:
            with self.client(socket_timeout=1.0) as conn:
                return bool(conn.ping())
        except redis.RedisError:
            return False

    def check_alive(self) -> None:
        """Raise DevClusterError with the log's tail if the server has exited."""
        self.process.check_alive()

    def kill(self) -> None:
        """SIGKILL the server (no shutdown save)."""
        self.process.kill()

    def terminate(self) -> None:
        """SIGTERM the server without waiting (``stop()`` finishes the job)."""
        if self._process is not None:
            self._process.terminate()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM, SIGKILL after ``timeout`` s), keeping its data dir."""
        self.process.stop(timeout)

    def restart(self) -> None:
        """Start a stopped or killed server again on the same port and dir, and wait until it answers."""
        if self.process.running:
            raise DevClusterError("redis-server is still running; kill() or shutdown() it first")
        self.process.start()
        self.wait_ready()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and delete its dir unless it is a kept ``data_dir``. Idempotent."""
        if self._process is not None:
            self._process.stop(timeout)
        if self.dir is not None:
            if self.dir != self.data_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
