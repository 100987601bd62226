"""The version reads' pipelined connection (serving/redis_pipe.py) against a real redis-server:
replies matched to requests in order, the handshake redis-py would do (AUTH with and without a
user, SELECT, TLS), and what a lost, silent or refusing Redis does to the reads in flight."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.exceptions
from redis.asyncio import Redis

from serving.cache import RedisStore, version_key
from serving.loop_turn import nothing_else_ready
from serving.redis_pipe import Endpoint, RedisPipe, encode_command
from serving.redis_process import RedisProcess
from tests.polling import eventually
from tests.serving.certs import make_pki


def _unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


def test_commands_are_resp_arrays_of_bulk_strings() -> None:
    assert encode_command(b"GET", b"k") == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert encode_command(b"AUTH", b"user", b"p w") == b"*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$3\r\np w\r\n"


def test_the_endpoint_is_what_redis_py_would_connect_to() -> None:
    unix = Endpoint.of(Redis.from_url("unix:///tmp/r.sock?db=3"))
    assert unix is not None and (unix.path, unix.host, unix.db, unix.ssl_context) == ("/tmp/r.sock", None, 3, None)
    tcp = Endpoint.of(Redis.from_url("redis://alice:pw@10.0.0.2:6380/1", socket_connect_timeout=0.5))
    assert tcp is not None and (tcp.host, tcp.port, tcp.db, tcp.username, tcp.password) == ("10.0.0.2", 6380, 1, "alice", "pw")
    assert tcp.connect_timeout_s == 0.5
    assert tcp.handshake() == [encode_command(b"AUTH", b"alice", b"pw"), encode_command(b"SELECT", b"1")]
    plain = Endpoint.of(Redis.from_url("redis://127.0.0.1:6379/0"))
    assert plain is not None and plain.handshake() == []  # nothing to set up
    assert Endpoint.of(Redis.from_url("rediss://:pw@h:6380/0")).ssl_context is not None  # type: ignore[union-attr]
    # TLS settings that do not load (a missing CA file): no pipe; redis-py's connection reports the error
    assert Endpoint.of(Redis.from_url("rediss://h:6380/0?ssl_ca_certs=/nonexistent/ca.pem")) is None


async def test_concurrent_gets_each_get_their_own_reply_over_one_connection(redis_server: RedisProcess) -> None:
    client = Redis.from_url(redis_server.url)
    keys = [_unique(f"pipe-{i}") for i in range(200)]
    pipe = RedisPipe(Endpoint.of(client), 5.0)  # type: ignore[arg-type]
    try:
        for i, key in enumerate(keys[:150]):
            await client.set(key, f"value-{i}".encode())
        assert pipe.get(b"any") is None and not pipe.connected  # not connected yet: it starts connecting
        await pipe.connect()
        futures = [pipe.get(key.encode()) for key in keys]
        replies = await asyncio.gather(*futures)  # type: ignore[arg-type]
        assert replies == [f"value-{i}".encode() for i in range(150)] + [None] * 50  # in order, missing keys None
        assert pipe.connects == 1
    finally:
        await pipe.close()
        await client.aclose()


async def test_a_lone_read_is_written_at_once_and_the_reads_of_a_busy_turn_in_one_write(redis_server: RedisProcess) -> None:
    client = Redis.from_url(redis_server.url)
    pipe = RedisPipe(Endpoint.of(client), 5.0)  # type: ignore[arg-type]
    key = _unique("pipe-turn")
    try:
        await client.set(key, b"v")
        await pipe.connect()
        transport = pipe._protocol.transport  # type: ignore[union-attr]
        writes: list[bytes] = []
        write = transport.write
        transport.write = lambda data: (writes.append(bytes(data)), write(data))[1]  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        for _ in range(1000):  # until no other callback (the connection's own) is ready in this turn
            if nothing_else_ready(loop):
                break
            await asyncio.sleep(0)
        assert nothing_else_ready(loop)
        lone = pipe.get(key.encode())
        assert writes == [encode_command(b"GET", key.encode())]  # sent before this coroutine yields
        loop.call_soon(lambda: None)  # another callback ready in this turn: reads wait for its end
        busy = [pipe.get(key.encode()), pipe.get(b"missing")]
        assert len(writes) == 1
        assert await asyncio.gather(lone, *busy) == [b"v", b"v", None]  # type: ignore[arg-type]
        assert writes[1:] == [encode_command(b"GET", key.encode()) + encode_command(b"GET", b"missing")]
    finally:
        await pipe.close()
        await client.aclose()


async def test_an_error_reply_fails_only_its_own_read(redis_server: RedisProcess) -> None:
    client = Redis.from_url(redis_server.url)
    hash_key, plain_key = _unique("pipe-hash"), _unique("pipe-plain")
    await client.hset(hash_key, "f", "v")
    await client.set(plain_key, b"ok")
    pipe = RedisPipe(Endpoint.of(client), 5.0)  # type: ignore[arg-type]
    try:
        await pipe.connect()
        wrong, right = pipe.get(hash_key.encode()), pipe.get(plain_key.encode())
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await wrong  # type: ignore[misc]
        assert await right == b"ok"  # type: ignore[misc]
        assert pipe.connected
    finally:
        await pipe.close()
        await client.aclose()


async def test_auth_with_and_without_a_user_and_select(tmp_path: Path) -> None:
    """A password (requirepass), an ACL user, and a database other than 0, as in the URL."""
    with RedisProcess(port=0) as server:
        admin = Redis(host="127.0.0.1", port=server.port)
        await admin.acl_setuser("reader", enabled=True, passwords=["+reader-pw"], keys=["*"], commands=["+@all"])
        await admin.config_set("requirepass", "s3cret")  # the default user needs it from here on
        await admin.aclose()
        writer = Redis.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        await writer.set("selected", b"in db 3")
        try:
            for url in (f"redis://:s3cret@127.0.0.1:{server.port}/3", f"redis://reader:reader-pw@127.0.0.1:{server.port}/3"):
                pipe = RedisPipe(Endpoint.of(Redis.from_url(url)), 5.0)  # type: ignore[arg-type]
                await pipe.connect()
                assert await pipe.get(b"selected") == b"in db 3"  # type: ignore[misc]
                await pipe.close()
            refused = RedisPipe(Endpoint.of(Redis.from_url(f"redis://:wrong@127.0.0.1:{server.port}/3")), 5.0)  # type: ignore[arg-type]
            with pytest.raises(redis.exceptions.AuthenticationError, match="refused the connection's set-up"):
                await refused.connect()  # a ConnectionError, as redis-py's: the gateway starts with Redis "down"
            assert not refused.connected and refused.get(b"selected") is None  # no connection: callers go another way
            await refused.close()
        finally:
            await writer.aclose()


@pytest.fixture
async def tls_proxy(tmp_path: Path, redis_server: RedisProcess) -> AsyncIterator[tuple[int, Path, list[bool]]]:
    """A TLS front for the test redis-server (it has no TLS of its own here): (port, CA file, one
    entry per TLS connection it accepted)."""
    pki = make_pki(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    accepted: list[bool] = []
    socket_path = str(redis_server.socket_path)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer.get_extra_info("ssl_object") is not None)
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(socket_path)

        async def copy(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                target.write(data)
                await target.drain()
            target.close()

        await asyncio.gather(copy(reader, upstream_writer), copy(upstream_reader, writer), return_exceptions=True)

    server = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)
    yield server.sockets[0].getsockname()[1], pki.ca.cert, accepted
    server.close()


async def test_tls_with_redis_py_certificate_settings(tls_proxy: tuple[int, Path, list[bool]], redis_server: RedisProcess) -> None:
    port, ca, accepted = tls_proxy
    key = _unique("pipe-tls")
    plain = Redis.from_url(redis_server.url)
    await plain.set(key, b"over tls")
    await plain.aclose()
    client = Redis.from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}")
    pipe = RedisPipe(Endpoint.of(client), 5.0)  # type: ignore[arg-type]
    try:
        await pipe.connect()
        assert await pipe.get(key.encode()) == b"over tls"  # type: ignore[misc]
        assert accepted == [True]
    finally:
        await pipe.close()
    untrusting = RedisPipe(Endpoint.of(Redis.from_url(f"rediss://127.0.0.1:{port}/0")), 5.0)  # type: ignore[arg-type]
    with pytest.raises(redis.exceptions.ConnectionError, match="could not connect"):  # the system CAs do not know ours
        await untrusting.connect()
    await untrusting.close()


async def test_a_lost_connection_fails_the_reads_waiting_on_it() -> None:
    """A Redis that reads the commands and hangs up before answering: every read waiting fails with
    redis' ConnectionError (the store's "Redis is down")."""
    received = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"second\r\n")  # both GETs arrived
        received.set()
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    pipe = RedisPipe(Endpoint(host="127.0.0.1", port=server.sockets[0].getsockname()[1]), 5.0)
    try:
        await pipe.connect()
        waiting = [pipe.get(b"first"), pipe.get(b"second")]
        for read in waiting:
            with pytest.raises(redis.exceptions.ConnectionError, match="lost"):
                await read  # type: ignore[misc]
        assert received.is_set() and not pipe.connected
    finally:
        await pipe.close()
        server.close()


@contextlib.asynccontextmanager
async def store_on(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], timeout_s: float) -> AsyncIterator[RedisStore]:
    """A store whose Redis is `handler` (a fake server on a free port), its pipe connected."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    client = Redis.from_url(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}", socket_timeout=None)
    store = RedisStore(client, ttl_s=600, timeout_s=timeout_s, retry_s=0.0)
    try:
        assert store.pipe is not None
        await store.pipe.connect()
        yield store
    finally:
        await store.aclose()
        server.close()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"-LOADING Redis is loading the dataset in memory", redis.exceptions.BusyLoadingError),
        (b"-ERR max number of clients reached", redis.exceptions.MaxClientsReachedError),
        (b"-NOAUTH Authentication required.", redis.exceptions.AuthenticationError),
    ],
)
async def test_a_redis_unusable_for_now_is_down_not_a_failed_read(reply: bytes, error: type[Exception]) -> None:
    """A restarted Redis answers -LOADING while it reads its AOF, a full one refuses more clients, one
    whose password changed -NOAUTH: on the pipe as on redis-py, each is a ConnectionError (the store
    known down, a call UNAVAILABLE or answered without the cache), not the ResponseError a failed
    command is (INTERNAL)."""

    async def unusable(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"apron:version:{u}\r\n")
        writer.write(reply + b"\r\n")
        await writer.drain()

    async with store_on(unusable, timeout_s=5.0) as store:
        sent = store.send_version_read("u")
        assert sent is not None
        with pytest.raises(error) as raised:
            await store.get_version("u", sent)
        assert isinstance(raised.value, redis.exceptions.ConnectionError) and store.known_down


async def test_a_reply_no_read_asked_for_drops_the_connection_with_its_error() -> None:
    """A full Redis sends its refusal as it accepts the connection, before any command: the pipe
    drops that connection with the refusal as its cause (no reply can be paired with a read after it)."""
    accepted = asyncio.Event()

    async def full(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"-ERR max number of clients reached\r\n")
        await writer.drain()
        accepted.set()
        await reader.read()  # until the pipe hangs up

    async with store_on(full, timeout_s=5.0) as store:
        pipe = store.pipe
        assert pipe is not None
        await accepted.wait()
        await eventually(lambda: not pipe.connected, "the pipe dropped the connection")
        assert isinstance(pipe._protocol.lost, redis.exceptions.MaxClientsReachedError)  # type: ignore[union-attr]


async def test_after_a_lost_connection_the_next_read_connects_again() -> None:
    with RedisProcess(port=0) as server:
        client = Redis(host="127.0.0.1", port=server.port)
        await client.set("k", b"v")
        pipe = RedisPipe(Endpoint.of(client), 5.0)  # type: ignore[arg-type]
        try:
            await pipe.connect()
            assert await pipe.get(b"k") == b"v"  # type: ignore[misc]
            assert await client.client_kill_filter(skipme=True) >= 1  # every client but this one: the pipe's
            after = pipe.get(b"k")  # sent to a closed connection, unless its loss was already seen
            if after is not None:
                with pytest.raises(redis.exceptions.ConnectionError, match="lost"):
                    await after
            assert not pipe.connected and pipe.get(b"k") is None  # the caller goes another way; a connection starts
            await pipe.connect()
            assert await pipe.get(b"k") == b"v" and pipe.connects == 2  # type: ignore[misc]
        finally:
            await pipe.close()
            await client.aclose()


async def test_a_silent_redis_times_out_the_read_and_drops_the_connection() -> None:
    """Through the store (which bounds every operation): a Redis that accepts the connection and
    never answers fails the read with redis' TimeoutError, and the pipe connects afresh after."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    try:
        async with store_on(silent, timeout_s=0.2) as store:
            sent = store.send_version_read("u")
            assert sent is not None
            with pytest.raises(redis.exceptions.TimeoutError, match="did not answer within 0.2 s"):
                await store.get_version("u", sent)
            assert store.known_down and store.pipe is not None and not store.pipe.connected
            assert store.send_version_read("u") is None  # known down: not even sent
    finally:
        for writer in accepted:
            writer.close()


async def test_the_store_reads_versions_on_the_pipe_and_without_it_alike(redis_server: RedisProcess) -> None:
    client = Redis.from_url(redis_server.url)
    piped = RedisStore(client, ttl_s=600, timeout_s=5.0)
    plain = RedisStore(client, ttl_s=600, timeout_s=5.0, pipelined=False)
    unbounded = RedisStore(client, ttl_s=600)  # no time limit of its own: the pipe could wait forever
    users = [_unique(f"store-pipe-{i}") for i in range(4)]
    try:
        assert plain.pipe is None and unbounded.pipe is None and piped.pipe is not None
        for user in users[:3]:
            await piped.store_edits(user, {}, reset=True)
        await piped.pipe.connect()
        expected = [await client.get(version_key(user)) for user in users]
        assert expected[-1] is None and all(expected[:3])
        assert await asyncio.gather(*(piped.get_version(user) for user in users)) == expected
        assert await asyncio.gather(*(plain.get_version(user) for user in users)) == expected
    finally:
        await piped.aclose()


async def test_a_failed_connection_is_not_tried_again_by_every_read(tmp_path: Path) -> None:
    """While the pipe cannot connect, reads go the other way (None) and start no new attempt until
    RECONNECT_AFTER_S has passed on its clock; `connect()` itself always tries."""
    from serving.redis_pipe import RECONNECT_AFTER_S

    now = [100.0]
    pipe = RedisPipe(Endpoint(path=str(tmp_path / "no-redis.sock")), 5.0, clock=lambda: now[0])  # nothing listens there
    with pytest.raises(redis.exceptions.ConnectionError, match="could not connect"):
        await pipe.connect()
    assert pipe.attempts == 1
    assert [pipe.get(b"k") for _ in range(50)] == [None] * 50 and pipe.attempts == 1  # no attempt per read
    now[0] += RECONNECT_AFTER_S
    assert pipe.get(b"k") is None and pipe.attempts == 2  # past the pause: one more, in the background
    with pytest.raises(redis.exceptions.ConnectionError):
        await pipe.connect()  # waits for that attempt (and its failure)
    await pipe.close()
