"""The child's side of a process: bootstrap, status link to the parent, graceful stop.

Used by the publisher and by every exchange worker, so both behave the same way:
- SIGINT is ignored (a terminal Ctrl-C reaches the whole process group; the parent decides);
- SIGTERM, or a ``{"t":"stop"}`` message from the parent, starts a graceful stop;
- a second SIGTERM exits at once;
- the child exits when its parent dies (status link EOF, or ``getppid()`` changed);
- a ``beat`` with the child's stats is sent every second *from the event loop*, so a beat proves
  the loop runs (a blocked loop stops beating and the parent can tell);
- :func:`enable_stack_dumps` points ``faulthandler`` at the process's log file: fatal signals
  (SIGSEGV, SIGABRT...) and :data:`DUMP_SIGNAL` write every thread's stack there from the C signal
  handler, so a dump works while Python code is stuck. The ``ready`` message tells the parent
  where dumps go, and the parent sends :data:`DUMP_SIGNAL` to a hung child before killing it.
  A dump holds code locations only (file, line, function), never variable values: no secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import socket
import time
from typing import Any, Awaitable, Callable

from shared import ipc

log = logging.getLogger(__name__)

StatsFn = Callable[[], dict[str, Any]]

#: the parent sends this to a hung child: faulthandler dumps every thread's stack into the log.
#: Nothing else in the project uses SIGUSR1 (SIGTERM = graceful stop, SIGINT = ignored).
DUMP_SIGNAL = signal.SIGUSR1

# this process's dump target: (path or "stderr", our own fd or None); None until enabled
_dump_target: tuple[str, int | None] | None = None


def enable_stack_dumps(path: str | os.PathLike[str] | None) -> str:
    """Send faulthandler's dumps (fatal signals, and :data:`DUMP_SIGNAL`) to ``path``; returns
    where they go: the path, or ``"stderr"`` when ``path`` is None or cannot be opened.

    The file is opened with its own O_APPEND descriptor (the C handler writes with ``write(2)``
    and must not share a buffered stream that log rotation closes; appends from both writers
    land whole at the end). Call it again after the log file was rotated: it re-points the
    handlers at the new file before closing the old descriptor, so no dump is lost in between.
    """
    global _dump_target
    fd: int | None = None
    if path is not None:
        # no logging here: this also runs inside a log handler's rollover
        with contextlib.suppress(OSError):
            fd = os.open(os.fspath(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    target = fd if fd is not None else 2
    faulthandler.enable(file=target, all_threads=True)
    faulthandler.register(DUMP_SIGNAL, file=target, all_threads=True, chain=False)
    where = os.fspath(path) if path is not None and fd is not None else "stderr"
    old, _dump_target = _dump_target, (where, fd)
    if old is not None and old[1] is not None:
        os.close(old[1])
    return _dump_target[0]


def stack_dumps_target() -> str | None:
    """Where this process's stack dumps go (a path or ``"stderr"``); None if not set up here."""
    return _dump_target[0] if _dump_target is not None else None


class StatusLink:
    """The child's end of its socketpair with the parent."""

    def __init__(self, sock: socket.socket, name: str, beat_interval: float = 1.0) -> None:
        self.name = name
        self._sock = sock
        self._beat_interval = beat_interval
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task] = []
        self._ppid = os.getppid()
        self.stop_requested = asyncio.Event()
        #: seconds the parent allows for the graceful stop (from its stop message), if it said
        self.stop_budget: float | None = None
        self.parent_gone = False
        self._stats_fn: StatsFn = dict
        self._on_message: Callable[[dict], None] | None = None
        self._loop_lag_max = 0.0

    async def start(self, stats_fn: StatsFn, on_message: Callable[[dict], None] | None = None) -> None:
        """Open the link and start beating. ``on_message`` receives parent messages other than stop."""
        self._stats_fn = stats_fn
        self._on_message = on_message
        reader, self._writer = await ipc.open_stream(self._sock)
        self._tasks = [
            asyncio.create_task(self._beat_loop(), name=f"{self.name}-beat"),
            asyncio.create_task(self._read_loop(reader), name=f"{self.name}-link"),
        ]

    def send(self, msg: dict) -> None:
        if self._writer is not None and not self._writer.is_closing():
            ipc.write_frame(self._writer, msg)

    def ready(self) -> None:
        """The readiness signal: the parent moves this child STARTING -> RUNNING.

        ``dumps`` (when faulthandler is set up) tells the parent it may ask for a stack dump with
        that signal before killing this process as hung, and where the dump is written."""
        msg: dict[str, Any] = {"t": "ready", "pid": os.getpid()}
        target = stack_dumps_target()
        if target is not None:
            msg["dumps"] = {"signal": int(DUMP_SIGNAL), "file": target}
        self.send(msg)

    def request_stop(self) -> None:
        self.stop_requested.set()

    async def _beat_loop(self) -> None:
        interval = self._beat_interval
        expected = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, expected - time.monotonic()))
            now = time.monotonic()
            self._loop_lag_max = max(self._loop_lag_max, now - expected)
            expected = now + interval
            if os.getppid() != self._ppid:
                self._gone("parent pid changed")
                return
            try:
                stats = self._stats_fn()
            except Exception:  # noqa: BLE001 - a stats bug must not stop the beat
                log.exception("stats collection failed")
                stats = {}
            stats["loop_lag_ms"] = round(self._loop_lag_max * 1000, 1)
            self._loop_lag_max = 0.0
            try:
                self.send({"t": "beat", "stats": stats})
                if self._writer is not None:
                    await asyncio.wait_for(self._writer.drain(), timeout=5)
            except (ConnectionError, asyncio.TimeoutError, RuntimeError):
                self._gone("status link broken")
                return

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = await ipc.read_frame(reader)
                if msg is None:
                    self._gone("status link closed")
                    return
                if msg.get("t") == "stop":
                    budget = msg.get("deadline_s")
                    if isinstance(budget, (int, float)) and budget >= 0:
                        self.stop_budget = float(budget)
                    self.request_stop()
                elif self._on_message is not None:
                    self._on_message(msg)
        except (ipc.FrameError, ConnectionError) as exc:
            self._gone(f"status link error: {exc}")

    def _gone(self, why: str) -> None:
        if not self.parent_gone:
            log.warning("parent gone (%s); stopping", why)
        self.parent_gone = True
        self.request_stop()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer.drain(), timeout=1)
            except Exception:  # noqa: BLE001
                pass
            self._writer.close()


def run_child(name: str, main: Callable[[StatusLink], Awaitable[int]], status_sock: socket.socket) -> int:
    """Run ``main(link)`` in a fresh event loop with the child signal policy; return its exit code.

    ``main`` must return when ``link.stop_requested`` is set, after finishing its graceful work.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def _runner() -> int:
        loop = asyncio.get_running_loop()
        link = StatusLink(status_sock, name)
        term_count = 0

        def on_term() -> None:
            nonlocal term_count
            term_count += 1
            if term_count > 1:
                log.warning("second SIGTERM: exiting now")
                os._exit(1)
            link.request_stop()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        try:
            return await main(link)
        finally:
            await link.close()

    return asyncio.run(_runner())
