"""The control socket: ``collectorctl`` <-> the running collector.

A Unix stream socket at ``settings.control_socket`` (mode 0600: file permissions are the
authentication, as in gunicorn's ``ctl``), framed with :mod:`shared.ipc`. One request, one reply::

    {"cmd": "ping"|"status"|"restart"|"stop"|"start", "args": {"name": ...}}
    -> {"ok": true, ...}  or  {"ok": false, "error": "..."}

A malformed request gets an error reply; nothing a client sends can stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any, Callable

from shared import ipc
from shared.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], dict[str, Any]]

#: at most this many clients at once; more are told so and closed (bounded everything)
MAX_CLIENTS = 16
#: a client that sends nothing for this long is disconnected
IDLE_TIMEOUT_S = 30.0
#: requests are tiny; anything bigger is a protocol error
MAX_REQUEST_BYTES = 64 * 1024


class Unreachable(Exception):
    """The collector's control socket is missing, refuses connections, or does not answer."""


class ControlServer:
    """Serves requests on a Unix socket; ``handler(cmd, args)`` returns the reply dict."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = Path(path)
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._remove_stale()
        # the umask makes the socket 0600 from the moment it exists (no chmod race)
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve_client, path=str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        log.info("control socket listening at %s", self.path)

    def _remove_stale(self) -> None:
        """A socket left by a killed collector (the lock file guarantees it is not live)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise OSError(f"control socket path {self.path} is a directory")
        self.path.unlink()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            if len(self._clients) > MAX_CLIENTS:
                await self._reply(writer, {"ok": False, "error": "too many control clients; try again"})
                return
            while True:
                try:
                    msg = await asyncio.wait_for(self._read_request(reader), timeout=IDLE_TIMEOUT_S)
                except asyncio.TimeoutError:
                    return
                except ipc.FrameError as exc:
                    await self._reply(writer, {"ok": False, "error": f"bad request: {exc}"})
                    return
                if msg is None:
                    return
                await self._reply(writer, self.dispatch(msg))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> Any | None:
        try:
            head = await reader.readexactly(ipc.HEADER.size)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise ipc.FrameError("truncated frame header") from None
        (n,) = ipc.HEADER.unpack(head)
        if n > MAX_REQUEST_BYTES:
            raise ipc.FrameError(f"request of {n} bytes exceeds {MAX_REQUEST_BYTES}")
        try:
            body = await reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise ipc.FrameError("truncated frame body") from None
        return ipc.decode_body(body)

    def dispatch(self, msg: Any) -> dict[str, Any]:
        """Validate the request shape, call the handler, and never let an exception escape."""
        if not isinstance(msg, dict):
            return {"ok": False, "error": "bad request: expected a JSON object"}
        cmd = msg.get("cmd")
        args = msg.get("args") or {}
        if not isinstance(cmd, str):
            return {"ok": False, "error": "bad request: missing \"cmd\""}
        if not isinstance(args, dict):
            return {"ok": False, "error": "bad request: \"args\" must be an object"}
        try:
            reply = self._handler(cmd, args)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the control socket
            log.exception("control command %r failed", cmd)
            return {"ok": False, "error": f"internal error: {exc.__class__.__name__}: {exc}"}
        return reply

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        try:
            payload = ipc.encode(reply)
        except TypeError as exc:  # not JSON-able: a bug, but the client still gets an answer
            payload = ipc.encode({"ok": False, "error": f"internal error: unserializable reply ({exc})"})
        writer.write(payload)
        await asyncio.wait_for(writer.drain(), timeout=5)


def request(settings: Settings, cmd: str, args: dict[str, Any] | None = None,
            timeout: float = 5.0) -> dict[str, Any]:
    """Send one command to the running collector and return its reply (blocking).

    Raises :class:`Unreachable` when the socket is missing, refuses, or does not answer in time.
    """
    path = settings.control_socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise Unreachable(f"no control socket at {path} (is the collector running?)") from None
        except ConnectionRefusedError:
            raise Unreachable(f"control socket {path} refuses connections (stale socket?)") from None
        except PermissionError:
            raise Unreachable(f"control socket {path}: permission denied (run as the collector's user)") from None
        except OSError as exc:
            raise Unreachable(f"control socket {path}: {exc.strerror or exc}") from None
        try:
            ipc.send_msg(sock, {"cmd": cmd, "args": args or {}})
            reply = ipc.recv_msg(sock)
        except socket.timeout:
            raise Unreachable(f"collector at {path} did not answer within {timeout:g}s") from None
        except (OSError, ipc.FrameError) as exc:
            raise Unreachable(f"control socket {path}: {exc}") from None
        if reply is None:
            raise Unreachable(f"collector at {path} closed the connection without answering")
        if not isinstance(reply, dict):
            raise Unreachable(f"collector at {path} sent a malformed reply")
        return reply
    finally:
        sock.close()
