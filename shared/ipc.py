"""Length-prefixed JSON frames over stream sockets (Unix sockets and socketpairs).

One framing for every link between processes: worker -> publisher data channel, child <->
parent status links, and collectorctl <-> control socket. A frame is a 4-byte big-endian
length followed by an orjson document (a JSON object with a ``"t"`` type key). Each link is a
separate socket, so a SIGKILLed process can only break its own link, never another's (unlike a
shared multiprocessing.Queue, whose single write lock a killed writer can hold forever).

Message types (``"t"``):

worker -> publisher (data channel, ``Settings.publisher_socket``):
  ``hello``        {"t":"hello","exchange":str,"pid":int,"producer":str}  producer = this worker
                   process's id ("{exchange}.{pid}-{random}"), the key of its batch watermark
  ``events``       {"t":"events","exchange":str,"seq":int,"events":[WireEvent, ...]}  seq grows per
                   producer (gaps = batches the worker dropped); at most 65535 events
  ``instruments``  {"t":"instruments","exchange":str,"market":str,"full":bool,"source":str,
                    "detected_at":ms,"instruments":{native_symbol: InstrumentInfo}}
publisher -> worker (data channel):
  ``ack``          {"t":"ack","seq":int}  cumulative: every batch of this producer up to seq is in
                   Redis; the worker keeps (and after a reconnect re-sends) batches above it
child -> parent (status link):
  ``ready``        {"t":"ready","pid":int}
  ``beat``         {"t":"beat","stats":{...}}   sent every second from the child's event loop
parent -> publisher (status link):
  ``children``     {"t":"children","children":{name: {"state":str,"pid":int|None,"stats":{...}}}}
parent -> child:
  ``stop``         {"t":"stop","deadline_s":float}  graceful stop (like SIGTERM); the child has
                   deadline_s seconds before the parent's SIGKILL
collectorctl <-> parent (control socket): {"cmd": str, "args": {...}} -> {"ok": bool, ...}
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import orjson

HEADER = struct.Struct(">I")
#: a frame larger than this is a protocol error (the link is closed)
MAX_FRAME = 64 * 1024 * 1024


class FrameError(Exception):
    """The peer sent something that is not a valid frame; close the link."""


def encode(msg: Any) -> bytes:
    body = orjson.dumps(msg)
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None


async def read_frame(reader: asyncio.StreamReader) -> Any | None:
    """The next message, or None on a clean EOF. Raises FrameError on garbage or truncation."""
    try:
        head = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FrameError("truncated frame header") from None
    (n,) = HEADER.unpack(head)
    if n > MAX_FRAME:
        raise FrameError(f"frame of {n} bytes exceeds {MAX_FRAME}")
    try:
        body = await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise FrameError("truncated frame body") from None
    return decode_body(body)


def write_frame(writer: asyncio.StreamWriter, msg: Any) -> None:
    writer.write(encode(msg))


# ---- blocking helpers (collectorctl, tests) ----

def send_msg(sock: socket.socket, msg: Any) -> None:
    sock.sendall(encode(msg))


def recv_msg(sock: socket.socket) -> Any | None:
    head = _recv_exact(sock, HEADER.size)
    if head is None:
        return None
    (n,) = HEADER.unpack(head)
    if n > MAX_FRAME:
        raise FrameError(f"frame of {n} bytes exceeds {MAX_FRAME}")
    body = _recv_exact(sock, n)
    if body is None:
        raise FrameError("truncated frame body")
    return decode_body(body)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if buf:
                raise FrameError("truncated frame")
            return None
        buf += chunk
    return bytes(buf)


async def open_stream(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams over an already-connected socket (e.g. one end of a socketpair)."""
    sock.setblocking(False)
    return await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME + HEADER.size)
