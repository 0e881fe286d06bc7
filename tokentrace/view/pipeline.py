"""Send commands already encoded in the Redis protocol, and check their integer replies without parsing each.

The trace index writes thousands of ``APPEND`` commands per flush. redis-py parses every reply in Python, a
coroutine and a few objects each, which cost the worker as much per trace as building the commands. Every
command sent here answers one line (``:<integer>`` or ``-<error>``), so counting line ends on the connection's
stream is enough to know when all replies are in; the bytes are checked once at the end.

redis-py has no public way to write raw bytes to a connection, so this module (and nothing else) reads an
asyncio connection's ``_reader``/``_writer`` streams; when an upgrade removes them it raises
``IncompatibleLibrary`` naming redis-py (pyproject.toml bounds redis to the tested range).

The connection comes from the client's pool (so ``redis.url`` authentication, TLS, database and timeouts all
apply) and goes back to it clean: after any error or unexpected reply it is disconnected rather than reused.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from tokentrace.core.compat import IncompatibleLibrary

__all__ = ["send_counted", "streams"]

REDIS = "redis"
REDIS_RANGE = ">=5.3,<9"

#: How many bytes to ask the stream for at once (replies are a few bytes each).
_READ_SIZE = 1 << 16

#: How much of a send is handed to the transport at once. asyncio copies whatever the socket does not take
#: at once into the transport's buffer (and ``writelines`` joins its parts first): a multi-megabyte send
#: written whole was joined, sliced and buffered, three copies and fresh pages each (bench/RESULTS.md). Each
#: piece here waits until the one before has left the buffer, so only a piece's unsent tail is ever copied.
_WRITE_SIZE = 1 << 18


async def send_counted(client: aioredis.Redis, commands: bytes | list[bytes], replies: int) -> None:
    """Send ``commands`` (RESP-encoded, each answering one integer; bytes, or a list of bytes sent one after the
    other) and wait for their ``replies``.

    Raises ``redis.asyncio.ConnectionError`` or ``TimeoutError`` when the connection fails or stalls for the
    client's socket timeout, ``BusyLoadingError`` while Redis loads its data, ``ResponseError`` naming the first
    error Redis answered (after reading every reply).
    """
    pool = client.connection_pool
    connection: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        data = await _exchange(connection, commands, replies)
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
    if data.count(b"\r\n:") + data.startswith(b":") != replies:
        _raise_first_error(data)


async def _exchange(connection: AbstractConnection, commands: bytes | list[bytes], replies: int) -> bytes:
    if not connection.is_connected:
        await connection.connect()  # type: ignore[no-untyped-call]
    reader, writer = streams(connection)
    await _write(writer, [commands] if isinstance(commands, bytes) else commands, connection.socket_timeout)
    data = bytearray()
    lines = 0
    try:
        async with asyncio.timeout(connection.socket_timeout):
            while lines < replies:
                chunk = await reader.read(_READ_SIZE)
                if not chunk:
                    raise aioredis.ConnectionError("Redis closed the connection")
                lines += chunk.count(b"\n")
                data += chunk
    except TimeoutError:
        raise aioredis.TimeoutError(f"Redis did not answer within {connection.socket_timeout} s") from None
    except OSError as exc:
        raise aioredis.ConnectionError(f"reading from Redis: {exc!r}") from exc
    if lines != replies or not data.endswith(b"\r\n"):
        raise aioredis.ResponseError(f"expected {replies} one-line replies from Redis, got {bytes(data[:200])!r}")
    return bytes(data)


def streams(connection: AbstractConnection) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connected redis-py connection's asyncio streams (private attributes: see the module docstring)."""
    reader = getattr(connection, "_reader", None)
    writer = getattr(connection, "_writer", None)
    if not isinstance(reader, asyncio.StreamReader) or not isinstance(writer, asyncio.StreamWriter):
        raise IncompatibleLibrary(
            REDIS, "a connected redis.asyncio connection has no _reader/_writer streams", REDIS_RANGE
        )
    return reader, writer


async def _write(writer: asyncio.StreamWriter, parts: list[bytes], stall_s: float | None) -> None:
    """Write ``parts`` in pieces of ``_WRITE_SIZE``, each once the transport's buffer is empty again; raises
    ``redis.asyncio.TimeoutError`` when a piece does not leave within ``stall_s`` seconds."""
    transport = writer.transport
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0)  # drain() returns once the buffer is empty
    try:
        for part in parts:
            view = memoryview(part)
            for start in range(0, len(view), _WRITE_SIZE):
                transport.write(view[start : start + _WRITE_SIZE])
                if transport.get_write_buffer_size():
                    async with asyncio.timeout(stall_s):
                        await writer.drain()
    except TimeoutError:
        raise aioredis.TimeoutError(f"Redis did not take a write within {stall_s} s") from None
    except OSError as exc:
        raise aioredis.ConnectionError(f"writing to Redis: {exc!r}") from exc
    finally:
        transport.set_write_buffer_limits(high=high, low=low)


def _raise_first_error(data: bytes) -> None:
    for line in data.split(b"\r\n"):
        if line.startswith(b"-"):
            message = line[1:].decode(errors="replace")
            if message.startswith("LOADING"):
                raise aioredis.BusyLoadingError(message)
            raise aioredis.ResponseError(message)
    raise aioredis.ResponseError(f"unexpected reply from Redis: {data[:200]!r}")
