"""Hostile connections against a real ``tokentrace serve``: gzip bombs, slow clients, too many sockets.

Each test measures the server process itself (CPU seconds and peak memory from /proc) and a concurrent
``/health`` round trip, since the failures these reproduce were a busy or bloated server, not a wrong status.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server_process import ServerProcess

#: 1 GiB of zeros compresses to about 1 MiB.
BOMB_BYTES = 1 << 30


@pytest.fixture(scope="module")
def bomb() -> bytes:
    chunk = b"\0" * (1 << 20)
    compressor = gzip.GzipFile(fileobj=(out := _Buffer()), mode="wb", compresslevel=9)
    for _ in range(BOMB_BYTES // len(chunk)):
        compressor.write(chunk)
    compressor.close()
    return out.getvalue()


class _Buffer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("hostile")
    process = ServerProcess(work / "data")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _post_bomb(server: ServerProcess, body: bytes, results: list[tuple[int, float]]) -> None:
    """Send the whole compressed body as a client would, then read the answer; record status and how long
    the server kept the connection open after answering."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        head = (
            f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with contextlib.suppress(OSError):  # the server may close before the last bytes, having stopped reading
            sock.sendall(head + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.read()
        answered = time.monotonic()
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass
        results.append((response.status, time.monotonic() - answered))


def test_a_gzip_bomb_is_413_and_not_inflated_past_the_limit(server: ServerProcess, bomb: bytes) -> None:
    """Was: 413, then the server inflated the rest of the bomb anyway (377 MB peak, CPU for seconds)."""
    assert server.process is not None
    pid = server.process.pid
    cpu_before = _cpu_seconds(pid)
    results: list[tuple[int, float]] = []
    _post_bomb(server, bomb, results)
    time.sleep(1.0)  # what the server still does after answering counts too
    [(status, _)] = results
    assert status == 413
    # Inflating 1 GiB costs seconds of CPU; inflating up to max_body_bytes (32 MiB) a few tens of ms.
    assert _cpu_seconds(pid) - cpu_before < 0.6


def test_eight_bombs_at_once_leave_health_responsive(server: ServerProcess, bomb: bytes) -> None:
    """Was: 827 MB and a 15 s stall for eight concurrent bombs."""
    assert server.process is not None
    pid = server.process.pid
    rss_before = _status_kb(pid, "VmRSS")
    results: list[tuple[int, float]] = []
    threads = [threading.Thread(target=_post_bomb, args=(server, bomb, results)) for _ in range(8)]
    for thread in threads:
        thread.start()
    worst = 0.0
    while any(t.is_alive() for t in threads):
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("GET", "/health")
        assert connection.getresponse().status == 200
        connection.close()
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert [status for status, _ in results] == [413] * 8, results
    assert worst < 2.0, f"/health took {worst:.2f} s while bombs were inflated: {results}"
    assert _status_kb(pid, "VmHWM") - rss_before < 300 * 1024  # peak growth under 300 MB for all eight
