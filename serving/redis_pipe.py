"""One pipelined Redis connection for the gateway's hottest command: a user's version read (GET).

Every cached Recommend asks Redis for one short version token (serving/cache.py, versioned reads).
Through redis-py that GET cost about 100 µs of the event loop's CPU on the 2-core machine (a pool
checkout, the retry wrapper, command packing, a stream reader's wake-up of the waiting task);
`python -m benchmarks.redis_pipe_cost` measures the two alike, alone and through whole gateways
(serving/README.md has its figures).

Here a GET is written to the socket at once, by the caller, with no task and no pool; Redis answers
a connection's commands in the order it got them, so replies are matched to the waiting futures
first in, first out, parsed by hiredis in one `data_received` callback however many arrive
together. Sending is synchronous, so a caller can start the read, compute while it is in flight,
and await it after (the servicer's `_score_while_confirming`).

Only GET is spoken here, and only to one Redis (no cluster: its keys live on many nodes). It
connects as redis-py's own connection would, from the same client's settings: TCP or a Unix
socket, TLS (rediss://, with redis-py's certificate settings), AUTH and SELECT. Everything else
(scripts, transactions, writes, a cluster) stays on redis-py.

Failures are redis-py's exceptions, so the store's handling of a Redis that is down is unchanged:
a lost connection fails every read waiting on it with `ConnectionError`, and one unanswered for
`timeout_s` (the store's own limit per operation) fails them with `TimeoutError` and drops the
connection; the next read connects again. A caller that stops waiting leaves its reply to be read
and dropped. An error reply fails its own read only (`reply_error`).

Cheap on purpose, as it runs once per call: no task and no timer per read (one timer watches the
oldest read in flight), and under load the reads sent in one event-loop turn go out in one write
(a lone read goes out at once: `serving/loop_turn.py`).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hiredis
import redis.exceptions
from redis._parsers.base import BaseParser  # its error table: how redis-py itself raises each reply
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

from serving.loop_turn import nothing_else_ready

CONNECT_TIMEOUT_S = 1.0  # when the client names none
# After a failed connection, reads take the other way this long before one starts another: a pipe
# that cannot connect (while redis-py can) must not cost every request a connection attempt.
RECONNECT_AFTER_S = 1.0


def encode_command(*parts: bytes) -> bytes:
    """A command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: what redis-py's connection for the same client would use."""

    host: str | None = None
    port: int = 6379
    path: str | None = None  # a Unix socket instead of host:port
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None
    connect_timeout_s: float = CONNECT_TIMEOUT_S

    @classmethod
    def of(cls, client: Redis) -> Endpoint | None:
        """The endpoint of a (non-cluster) redis-py client; None when it authenticates another way
        (a credential provider) than this connection knows, or its TLS settings do not load."""
        pool = client.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)  # not connected: only its settings are read
        if connection.credential_provider is not None and not connection.password:
            return None
        try:
            context = connection.ssl_context.get() if isinstance(connection, SSLConnection) else None
        except (OSError, ssl.SSLError):  # e.g. a missing CA file: redis-py's own connection reports it (start-up log)
            return None
        return cls(
            host=None if isinstance(connection, UnixDomainSocketConnection) else connection.host,
            port=getattr(connection, "port", 6379),
            path=connection.path if isinstance(connection, UnixDomainSocketConnection) else None,
            db=int(connection.db or 0),
            username=connection.username,
            password=connection.password,
            ssl_context=context,
            connect_timeout_s=connection.socket_connect_timeout or CONNECT_TIMEOUT_S,
        )

    def handshake(self) -> list[bytes]:
        """The commands that set the connection up before any read (AUTH, SELECT)."""
        commands = []
        if self.password:
            credentials = (self.username.encode(), self.password.encode()) if self.username else (self.password.encode(),)
            commands.append(encode_command(b"AUTH", *credentials))
        if self.db:
            commands.append(encode_command(b"SELECT", str(self.db).encode()))
        return commands


class _Protocol(asyncio.Protocol):
    """The connection: requests written in order, replies matched to them in order.

    Writes made in one event-loop turn go out in one system call at its end, or at once when no
    other callback is ready in the turn (`serving/loop_turn.py`: none could join). A request
    unanswered `timeout_s` after it was sent fails the connection (redis' TimeoutError for every
    read on it: the replies are in order, so all behind it are late too), checked by one timer for
    the oldest request rather than one per request."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()  # (reply, deadline)
        self.lost: Exception | None = None
        self._out: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, command: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._out:
            self._out.append(command)
        elif nothing_else_ready(loop):  # no other read can join this turn's write: send it now
            self._write(command)
        else:
            loop.call_soon(self._flush)
            self._out.append(command)
        deadline = loop.time() + self.timeout_s
        self.waiting.append((future, deadline))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._check)
        return future

    def _flush(self) -> None:
        out, self._out = self._out, []
        self._write(out[0] if len(out) == 1 else b"".join(out))

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _check(self) -> None:
        """The oldest request's deadline passed (or it was answered and the next one's is later)."""
        self._timer = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        deadline = self.waiting[0][1]
        if loop.time() < deadline:
            self._timer = loop.call_at(deadline, self._check)
            return
        self.fail(redis.exceptions.TimeoutError(f"Redis did not answer within {self.timeout_s:g} s"))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiting:  # no read asked for it (Redis refusing the connection as it accepts
                # it, "max number of clients reached"): the replies no longer pair with the reads
                error = reply_error(str(reply)) if isinstance(reply, hiredis.ReplyError) else None
                self.fail(error if isinstance(error, redis.exceptions.ConnectionError) else redis.exceptions.ConnectionError(
                    f"Redis sent a reply no read asked for: {reply!r}"
                ))  # fmt: skip
                return
            future, _ = self.waiting.popleft()
            if future.done():  # its caller stopped waiting
                continue
            if isinstance(reply, hiredis.ReplyError):
                _fail(future, reply_error(str(reply)))
            else:
                future.set_result(reply)

    def fail(self, error: Exception) -> None:
        """Every read waiting fails with `error`, and the connection is dropped."""
        if self.lost is None:
            self.lost = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                _fail(future, error)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(redis.exceptions.ConnectionError(f"the connection to Redis was lost{f': {exc}' if exc else ''}"))


def reply_error(message: str) -> redis.exceptions.RedisError:
    """An error reply as redis-py raises it (its own parser's table, one source for both): LOADING
    (a restarted Redis still reading its data), "max number of clients reached", NOAUTH / WRONGPASS
    are ConnectionErrors (the store unusable for now: UNAVAILABLE, or answered without the cache),
    not a failed command; any other is a ResponseError or one of its kinds."""
    return BaseParser.parse_error(message)


def _fail(future: asyncio.Future[Any], error: Exception) -> None:
    future.set_exception(error)
    future.exception()  # retrieved: a caller that stopped waiting is not logged as having lost it


class RedisPipe:
    """GETs over one pipelined connection, connected on first use and again after a loss.

    `get` sends at once when connected and returns the reply's future; it returns None while there
    is no connection (and starts one), so the caller can take another way meanwhile."""

    def __init__(self, endpoint: Endpoint, timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self.endpoint = endpoint
        self.timeout_s = timeout_s  # a read unanswered this long fails the connection (redis' TimeoutError)
        self.clock = clock
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._next_attempt = 0.0  # clock() before which a read starts no connection (RECONNECT_AFTER_S)
        self.connects = 0  # connections made (the first and each one after a loss)
        self.attempts = 0  # connections tried

    @property
    def connected(self) -> bool:
        protocol = self._protocol
        return protocol is not None and protocol.lost is None and protocol.transport is not None and not protocol.transport.is_closing()

    def get(self, key: bytes) -> asyncio.Future[bytes | None] | None:
        """GET `key`, sent now; None when not connected (a connection is started, unless one failed
        less than RECONNECT_AFTER_S ago)."""
        if not self.connected:
            if self.clock() >= self._next_attempt:
                self._start_connecting()
            return None
        return self._protocol.send(encode_command(b"GET", key))  # type: ignore[union-attr]

    async def connect(self) -> None:
        """Connect now, failed attempts or not (or wait for the connection under way); raises what
        connecting raised."""
        self._start_connecting()
        if self._connecting is not None:
            await asyncio.shield(self._connecting)

    def _start_connecting(self) -> None:
        if self._connecting is None and not self.connected:
            self.attempts += 1
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            self._connecting.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[None]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is not None:  # retrieved: not logged as lost
            self._next_attempt = self.clock() + RECONNECT_AFTER_S

    async def _connect(self) -> None:
        endpoint, loop = self.endpoint, asyncio.get_running_loop()
        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.timeout(endpoint.connect_timeout_s):
                make = functools.partial(_Protocol, self.timeout_s)
                if endpoint.path is not None:
                    transport, protocol = await loop.create_unix_connection(make, endpoint.path, ssl=endpoint.ssl_context)
                else:
                    transport, protocol = await loop.create_connection(make, endpoint.host, endpoint.port, ssl=endpoint.ssl_context)
                for reply in [protocol.send(command) for command in endpoint.handshake()]:
                    await reply  # AUTH refused, a bad SELECT: no connection (below)
        except BaseException as error:
            if transport is not None:
                transport.abort()
            if isinstance(error, TimeoutError):
                raise redis.exceptions.TimeoutError("connecting to Redis timed out") from error
            if isinstance(error, OSError):
                raise redis.exceptions.ConnectionError(f"could not connect to Redis: {error}") from error
            if isinstance(error, redis.exceptions.ResponseError | redis.exceptions.AuthenticationError):  # as redis-py: a refused set-up is no connection
                raise redis.exceptions.AuthenticationError(f"Redis refused the connection's set-up (AUTH, SELECT): {error}") from error
            raise
        self._protocol = protocol
        self.connects += 1

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
