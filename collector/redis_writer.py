"""A minimal asyncio Redis connection for pre-packed RESP commands (the publisher's hot path).

Why not redis-py's asyncio client: it encodes commands in pure Python and topped out near 40k
XADD/s with Redis idle at ~10% CPU, while the same commands packed with ``hiredis.pack_command``
and written to a plain socket reached ~200k/s (research/limits.md sections 2, 2b). So the caller
packs commands once (``hiredis.pack_command``), this class writes a whole batch in one call and
parses the replies with ``hiredis.Reader``.

Error replies (``-WRONGTYPE ...``) come back as ``hiredis.ReplyError`` objects in the reply list,
not raised: one bad command must not fail its batch. Connection problems (refused, reset, timeout,
TLS, AUTH) raise :class:`RedisUnavailable`; after one the connection is closed and the caller
reconnects. The password is sent only inside AUTH and never appears in an exception or log line.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from shared.settings import RedisSettings, redact_url

log = logging.getLogger(__name__)

#: error-reply prefixes that mean "the server cannot serve now", not "this command is wrong":
#: the command is retried instead of being dropped
TRANSIENT_ERROR_PREFIXES = (
    "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOAUTH", "READONLY", "MISCONF", "OOM",
)


class RedisUnavailable(Exception):
    """Redis cannot be reached or refused the connection; the message never holds a secret."""


def is_transient_error(reply: Any) -> bool:
    """True for an error reply that says the server is temporarily unable (retry later)."""
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith(TRANSIENT_ERROR_PREFIXES)


class RedisEndpoint:
    """Where and how to connect, parsed once from :class:`RedisSettings`."""

    def __init__(self, settings: RedisSettings) -> None:
        parts = urlsplit(settings.url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.redacted = redact_url(settings.url)
        self.scheme = parts.scheme
        self.host: str | None = None
        self.port: int | None = None
        self.path: str | None = None
        self.ssl_context: ssl.SSLContext | None = None
        db_text = query.get("db", "0")
        if self.scheme == "unix":
            self.path = unquote(parts.path)
            if not self.path:
                raise ValueError("redis.url: unix:// URL has no socket path")
        else:
            self.host = parts.hostname
            try:
                self.port = parts.port or 6379
            except ValueError:
                raise ValueError("redis.url: invalid port") from None
            if parts.path.strip("/"):
                db_text = parts.path.strip("/")
        try:
            self.db = int(db_text)
        except ValueError:
            raise ValueError("redis.url: the database must be a number, e.g. redis://host:6379/0") from None
        if self.db < 0:
            raise ValueError("redis.url: the database must be >= 0")
        self.username = unquote(parts.username) if parts.username else None
        self.password = settings.resolved_password()
        self.connect_timeout = settings.connect_timeout
        self.socket_timeout = settings.socket_timeout
        if self.scheme == "rediss":
            try:
                self.ssl_context = _ssl_context(query)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"redis.url: cannot load the TLS files named in the URL ({exc.__class__.__name__})") from None

    def describe(self) -> str:
        return self.redacted


def _ssl_context(query: dict[str, str]) -> ssl.SSLContext:
    """A verifying TLS context; ``ssl_ca_certs`` / ``ssl_cert_reqs`` / ``ssl_check_hostname`` query
    parameters (redis-py's names) adjust it."""
    ctx = ssl.create_default_context(cafile=query.get("ssl_ca_certs") or None)
    reqs = (query.get("ssl_cert_reqs") or "required").lower()
    if reqs == "none":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif reqs == "optional":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_OPTIONAL
    elif reqs != "required":
        raise ValueError("redis.url: ssl_cert_reqs must be none, optional or required")
    if (query.get("ssl_check_hostname") or "").lower() in ("false", "0", "no"):
        ctx.check_hostname = False
    certfile = query.get("ssl_certfile")
    if certfile:
        ctx.load_cert_chain(certfile, query.get("ssl_keyfile") or None)
    return ctx


class _RespProtocol(asyncio.Protocol):
    """Feeds received bytes straight into a hiredis.Reader; wakes the waiter when enough replies."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = hiredis.Reader()
        self.replies: list[Any] = []
        self.needed = 0
        self.waiter: asyncio.Future | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        parser.feed(data)
        try:
            while True:
                reply = parser.gets()
                if reply is False:
                    break
                self.replies.append(reply)
        except hiredis.ProtocolError as exc:
            self._fail(ConnectionError(f"protocol error from Redis: {exc}"))
            if self.transport is not None:
                self.transport.abort()
            return
        if self.waiter is not None and len(self.replies) >= self.needed and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail(exc if exc is not None else ConnectionResetError("connection closed by Redis"))

    def eof_received(self) -> bool | None:
        self._fail(ConnectionResetError("connection closed by Redis"))
        return None

    def _fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)


class RedisConnection:
    """One connection to Redis; ``execute_packed`` sends a batch and returns its replies.

    Reconnects lazily: after a failure the next call connects again (the caller paces retries).
    Calls are serialized by a lock, so concurrent users never interleave replies.
    """

    def __init__(self, settings: RedisSettings, *, name: str = "redis",
                 init_commands: list[tuple] | None = None) -> None:
        self.endpoint = RedisEndpoint(settings)
        self.name = name
        #: run after the handshake on every (re)connection (e.g. SCRIPT LOAD); an error reply fails
        #: the connect like a failed AUTH would
        self.init_commands: list[tuple] = list(init_commands or [])
        self._proto: _RespProtocol | None = None
        self._lock = asyncio.Lock()
        #: connections opened (the first included)
        self.connects = 0

    @property
    def connected(self) -> bool:
        p = self._proto
        return p is not None and p.lost is None and p.transport is not None and not p.transport.is_closing()

    def _scrub(self, text: str) -> str:
        """Belt and braces: no message we build may carry the password, whatever the cause."""
        pw = self.endpoint.password
        if pw and pw in text:
            text = text.replace(pw, "***")
        return text

    def _unavailable(self, what: str, exc: BaseException | None = None) -> RedisUnavailable:
        detail = ""
        if exc is not None:
            msg = str(exc)
            detail = f": {exc.__class__.__name__}" + (f": {msg}" if msg else "")
        return RedisUnavailable(self._scrub(f"{what} ({self.endpoint.describe()}){detail}"))

    async def connect(self) -> None:
        """Open the connection, AUTH, SELECT and PING. Raises RedisUnavailable."""
        await self.close()
        ep = self.endpoint
        loop = asyncio.get_running_loop()
        try:
            if ep.scheme == "unix":
                coro = loop.create_unix_connection(_RespProtocol, ep.path)
            else:
                coro = loop.create_connection(
                    _RespProtocol, ep.host, ep.port, ssl=ep.ssl_context,
                    server_hostname=ep.host if ep.ssl_context is not None else None,
                )
            async with asyncio.timeout(ep.connect_timeout):
                _, proto = await coro
        except TimeoutError:
            raise self._unavailable(f"connect timed out after {ep.connect_timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise self._unavailable("cannot connect", exc) from None
        self._proto = proto
        self.connects += 1
        handshake: list[tuple] = []
        if ep.password is not None:
            handshake.append(("AUTH", ep.username, ep.password) if ep.username else ("AUTH", ep.password))
        if ep.db:
            handshake.append(("SELECT", str(ep.db)))
        handshake.append(("PING",))  # proves auth worked and the dataset is loaded (else LOADING)
        handshake.extend(self.init_commands)
        data = b"".join(hiredis.pack_command(c) for c in handshake)
        try:
            replies = await self._roundtrip(data, len(handshake), ep.connect_timeout)
        except RedisUnavailable:
            await self.close()
            raise
        for cmd, reply in zip(handshake, replies):
            if isinstance(reply, hiredis.ReplyError):
                await self.close()
                # the reply text is Redis's (e.g. "WRONGPASS invalid username-password pair"); never the command
                raise RedisUnavailable(self._scrub(f"{cmd[0]} failed ({ep.describe()}): {reply}"))

    async def _roundtrip(self, data: bytes, n: int, timeout: float) -> list[Any]:
        proto = self._proto
        if proto is None or proto.lost is not None or proto.transport is None or proto.transport.is_closing():
            raise self._unavailable("not connected")
        loop = asyncio.get_running_loop()
        proto.replies = []
        proto.needed = n
        proto.waiter = loop.create_future()
        try:
            proto.transport.write(data)
            if len(proto.replies) < n:
                async with asyncio.timeout(timeout):
                    await proto.waiter
        except TimeoutError:
            await self.close()
            raise self._unavailable(f"no reply within {timeout:g}s") from None
        except (OSError, ConnectionError) as exc:
            await self.close()
            raise self._unavailable("connection lost", exc) from None
        except asyncio.CancelledError:
            # replies still in flight would be taken for the next command's: drop the connection
            self._abort()
            raise
        finally:
            proto.waiter = None
        replies = proto.replies
        proto.replies = []
        if len(replies) != n:
            await self.close()
            raise self._unavailable(f"expected {n} replies, got {len(replies)}")
        return replies

    async def execute_packed(self, data: bytes, n: int) -> list[Any]:
        """Send pre-packed commands (``hiredis.pack_command`` output, concatenated) in one write and
        return their ``n`` replies in order; error replies are ``hiredis.ReplyError`` objects.

        Connects first if needed. Raises RedisUnavailable on any connection problem (the batch may
        or may not have been applied; the caller decides whether to resend).
        """
        async with self._lock:
            if not self.connected:
                await self.connect()
            return await self._roundtrip(data, n, self.endpoint.socket_timeout)

    async def execute(self, *args: Any) -> Any:
        """One command (control-plane convenience); returns its reply (errors as ReplyError objects)."""
        return (await self.execute_packed(hiredis.pack_command(args), 1))[0]

    def _abort(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.abort()

    async def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
            # let the transport finish closing (TLS close_notify) without waiting forever
            await asyncio.sleep(0)
