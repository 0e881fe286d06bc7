"""Pre-encoded commands against a real Redis: replies counted, errors named, the connection never left out of step."""

from __future__ import annotations

from collections.abc import AsyncIterator
from unittest import mock

import pytest
import redis.asyncio as aioredis

from tests.infra.redis import RedisServer
from tokentrace.core.compat import IncompatibleLibrary
from tokentrace.view import pipeline
from tokentrace.view import writer as materialize
from tokentrace.view.pipeline import send_counted

pytestmark = pytest.mark.redis


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    connected = aioredis.Redis.from_url(redis_server.url)
    yield connected
    await connected.aclose()


async def test_a_connected_connection_has_the_streams_the_pipeline_writes_to(client: aioredis.Redis) -> None:
    """redis-py's private ``_reader``/``_writer``: an upgrade that drops them fails here, naming redis-py."""
    connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        reader, writer = pipeline.streams(connection)
        assert (reader, writer) == (connection._reader, connection._writer)
    finally:
        await client.connection_pool.release(connection)
    with pytest.raises(IncompatibleLibrary, match=r"^redis \S+ is not compatible with tokentrace: .*_reader"):
        pipeline.streams(mock.Mock(spec=[]))


def resp(*commands: tuple[bytes, ...]) -> bytes:
    out = bytearray()
    for args in commands:
        out += b"*%d\r\n" % len(args)
        for arg in args:
            out += b"$%d\r\n%s\r\n" % (len(arg), arg)
    return bytes(out)


async def test_many_commands_are_applied_and_counted_over_many_reads(client: aioredis.Redis) -> None:
    """20,000 commands (1.7 MB, written in several pieces): their replies arrive in many reads, and the call
    returns only once all are in; the pooled connection's write buffer limits are left as they were."""
    commands = resp(*((b"HSET", b"h%d" % (i % 100), b"f%d" % i, b"x" * 50) for i in range(20_000)))
    assert len(commands) > 4 * pipeline._WRITE_SIZE
    connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    limits = connection._writer.transport.get_write_buffer_limits()
    await client.connection_pool.release(connection)
    await send_counted(client, commands, 20_000)
    assert sum([await client.hlen(f"h{i}") for i in range(100)]) == 20_000
    assert await client.ping()  # the pooled connection is still in step
    connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    assert connection._writer.transport.get_write_buffer_limits() == limits
    await client.connection_pool.release(connection)


async def test_parts_are_sent_one_after_the_other_as_one_exchange(client: aioredis.Redis) -> None:
    """A list of pre-encoded pipelines (the trace index's sends, ``materialize._sends``) is one round trip."""
    parts = [resp(*((b"APPEND", b"k%d" % (i % 7), b"x%d\n" % i) for i in range(j, j + 3000))) for j in (0, 3000, 6000)]
    await send_counted(client, parts, 9000)
    assert sum([len((await client.get(f"k{i}") or b"").split(b"\n")) - 1 for i in range(7)]) == 9000
    assert await client.ping()


def test_trace_pipelines_are_joined_into_sends_up_to_the_size_limit() -> None:
    small, large = (b"a" * 10, 2), (b"b" * 7, 3)
    with mock.patch.object(materialize, "TRACE_SEND_BYTES", 20):
        assert materialize._sends([small, small, large, small, (b"c" * 30, 1), small]) == [
            ([small[0], small[0]], 4),
            ([large[0], small[0]], 5),
            ([b"c" * 30], 1),  # larger than the limit on its own: sent alone
            ([small[0]], 2),
        ]
    assert materialize._sends([]) == []
    assert materialize._sends([small, large]) == [([small[0], large[0]], 5)]


async def test_an_error_reply_is_raised_after_every_reply_is_read(client: aioredis.Redis) -> None:
    await client.set("text", "not a hash")
    commands = resp((b"HSET", b"a", b"f", b"1"), (b"HSET", b"text", b"f", b"1"), (b"HSET", b"b", b"f", b"1"))
    with pytest.raises(aioredis.ResponseError, match="WRONGTYPE"):
        await send_counted(client, commands, 3)
    assert await client.hget("a", "f") == b"1" and await client.hget("b", "f") == b"1"
    assert await client.get("text") == b"not a hash"  # the next command reads its own reply


async def test_a_reply_of_more_than_one_line_fails_and_drops_the_connection(client: aioredis.Redis) -> None:
    await client.set("k", "v")
    with pytest.raises(aioredis.ResponseError, match="one-line replies"):
        await send_counted(client, resp((b"GET", b"k")), 1)  # "$1\r\nv\r\n": two lines
    assert await client.get("k") == b"v"


async def test_the_url_s_password_and_database_apply(redis_server: RedisServer) -> None:
    admin = aioredis.Redis.from_url(redis_server.url)
    await admin.config_set("requirepass", "s3cret")
    other = aioredis.Redis.from_url(f"redis://:s3cret@{redis_server.host}:{redis_server.port}/3")
    try:
        await send_counted(other, resp((b"HSET", b"h", b"f", b"1")), 1)
        assert await other.hget("h", "f") == b"1"
        await admin.execute_command("AUTH", "s3cret")
        assert await admin.exists("h") == 0  # database 0 untouched
    finally:
        await other.aclose()
        await admin.aclose()


async def test_an_unreachable_redis_is_a_connection_error(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url, socket_connect_timeout=2)
    redis_server.stop()
    try:
        with pytest.raises(aioredis.ConnectionError):
            await send_counted(client, resp((b"HSET", b"h", b"f", b"1")), 1)
    finally:
        await client.aclose()
