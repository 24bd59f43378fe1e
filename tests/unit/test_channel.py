"""Worker -> publisher channel against a real Unix socket server started in the test."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Awaitable

from shared import ipc
from shared.settings import ChannelSettings
from tests.conftest import run_async, until
from workers.channel import PublisherChannel


class UnixServer:
    """Stands in for the publisher: records every frame and acks each ``events`` frame at once
    (``acking=False``: never acks, like a publisher whose Redis is down); ``reading=False`` reads
    the hello and then never reads again (a wedged publisher)."""

    def __init__(self, path: Path, *, reading: bool = True, acking: bool = True) -> None:
        self.path = path
        self.reading = reading
        self.acking = acking
        self.frames: list[dict] = []
        self.eofs = 0
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._never = asyncio.Event()

    async def start(self) -> "UnixServer":
        if self.path.exists():
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()
        if self.path.exists():
            self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            self.frames.append(await ipc.read_frame(reader))
            if not self.reading:
                await self._never.wait()
            while True:
                msg = await ipc.read_frame(reader)
                if msg is None:
                    self.eofs += 1
                    return
                self.frames.append(msg)
                if self.acking and msg.get("t") == "events":
                    ipc.write_frame(writer, {"t": "ack", "seq": msg["seq"]})
                elif msg.get("t") == "resume?":   # like a publisher over an empty Redis
                    ipc.write_frame(writer, {"t": "resume", "hwm": {}, "last": {}})
        except (ConnectionError, ipc.FrameError, asyncio.CancelledError):
            return

    def events(self) -> list:
        return [ev for f in self.frames if f and f.get("t") == "events" for ev in f["events"]]

    def event_ids(self) -> list[int]:
        return [ev[4] for ev in self.events()]


def ev(i: int, pad: int = 0) -> list:
    """A wire event whose rx_ns slot carries ``i`` (so order can be checked)."""
    return ["md:trade:binance:spot:BTC-USDT", f"t:binance:spot:BTCUSDT:{i}", "trade",
            ["trade_id", str(i), "pad", "x" * pad], i]


def run(coro: Awaitable[None], timeout: float = 20.0) -> None:
    run_async(coro, timeout)


def chan(path: Path, **kw) -> PublisherChannel:
    base = dict(batch_size=10, flush_interval=0.5, max_queued_batches=100, put_timeout=0.05)
    base.update(kw)
    return PublisherChannel("binance", path, ChannelSettings(**base))


# ---------------------------------------------------------------------------------------------

def test_hello_then_batches_with_seq(short_tmp: Path) -> None:
    async def main():
        sock = short_tmp / "pub.sock"
        server = await UnixServer(sock).start()
        ch = chan(sock, flush_interval=1.0)
        ch.start()
        for i in range(25):
            ch.put(ev(i))
        # full batches close at batch_size; the sender, once free, ships the partial batch at
        # once (adaptive batching) instead of holding it for the 1 s flush timer
        await until(lambda: len(server.events()) == 25, timeout=0.5, what="two full batches and the partial one")
        hello, *frames = server.frames
        assert hello == {"t": "hello", "exchange": "binance", "pid": os.getpid(), "producer": ch.producer}
        assert ch.producer.startswith(f"binance.{os.getpid()}-")
        assert [(f["t"], f["exchange"], f["seq"], len(f["events"])) for f in frames] == \
            [("events", "binance", 1, 10), ("events", "binance", 2, 10), ("events", "binance", 3, 5)]
        await ch.close(time.monotonic() + 2)
        assert [f["seq"] for f in server.frames[1:]] == [1, 2, 3]
        assert server.event_ids() == list(range(25))
        assert ch.events_out == 25 and ch.drops == 0
        await server.stop()

    run(main())


def test_partial_batch_flushed_after_flush_interval(short_tmp: Path) -> None:
    async def main():
        sock = short_tmp / "pub.sock"
        server = await UnixServer(sock).start()
        ch = chan(sock, batch_size=100, flush_interval=0.05)
        ch.start()
        for i in range(3):
            ch.put(ev(i))
        await until(lambda: len(server.events()) == 3, what="partial batch")
        assert len(server.frames) == 2  # hello + one frame with all three
        assert ch.stats()["queued_batches"] == 0
        await ch.close(time.monotonic() + 2)
        await server.stop()

    run(main())


def test_instruments_frame_ordered_after_earlier_events(short_tmp: Path) -> None:
    async def main():
        sock = short_tmp / "pub.sock"
        server = await UnixServer(sock).start()
        ch = chan(sock, flush_interval=1.0)
        ch.start()
        ch.put(ev(1))
        ch.put(ev(2))
        info = {"symbol": "BTC-USDT", "base": "BTC", "quote": "USDT", "market": "spot", "status": "trading",
                "raw_status": "TRADING", "url": "u"}
        ch.send_instruments("spot", True, "rest_binance", 1790000000000, {"BTCUSDT": info})
        await until(lambda: len(server.frames) == 3, what="events + instruments")
        assert server.frames[1]["t"] == "events" and len(server.frames[1]["events"]) == 2
        assert server.frames[2] == {"t": "instruments", "exchange": "binance", "market": "spot", "full": True,
                                    "source": "rest_binance", "detected_at": 1790000000000,
                                    "instruments": {"BTCUSDT": info}}
        await ch.close(time.monotonic() + 2)
        await server.stop()

    run(main())


def test_reconnects_after_publisher_restart_and_keeps_queued_batches(short_tmp: Path) -> None:
    async def main():
        sock = short_tmp / "pub.sock"
        ch = chan(sock, flush_interval=0.02)
        ch.start()  # publisher absent at first: events accumulate
        for i in range(15):
            ch.put(ev(i))
        await asyncio.sleep(0.2)
        assert ch.stats()["channel"] == "disconnected" and ch.queued_batches() == 2
        first = await UnixServer(sock).start()
        await until(lambda: len(first.events()) == 15, what="queued events after the publisher appeared")
        assert ch.stats()["channel"] == "connected"
        await first.stop()  # publisher restarts
        await until(lambda: not ch.connected, what="disconnect noticed")
        for i in range(15, 40):
            ch.put(ev(i))
        await asyncio.sleep(0.1)
        second = await UnixServer(sock).start()
        await until(lambda: len(second.events()) == 25, what="events on the new publisher")
        assert second.frames[0]["t"] == "hello"
        assert first.event_ids() + second.event_ids() == list(range(40))
        seqs = [f["seq"] for f in first.frames[1:] + second.frames[1:]]
        assert seqs == list(range(1, len(seqs) + 1))
        assert ch.drops == 0
        await ch.close(time.monotonic() + 2)
        await second.stop()

    run(main())


def test_wedged_publisher_drops_are_counted_and_loop_keeps_running(short_tmp: Path) -> None:
    async def main():
        sock = short_tmp / "pub.sock"
        server = await UnixServer(sock, reading=False).start()
        ch = chan(sock, batch_size=10, max_queued_batches=4, put_timeout=0.05, flush_interval=0.01)
        ch.start()
        await until(lambda: ch.connected, what="connected")
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        # put is a plain function: it cannot wait for the publisher (no timing assert needed)
        assert not asyncio.iscoroutinefunction(ch.put) and not asyncio.iscoroutinefunction(ch.put_many)
        n = 0
        started = time.monotonic()
        while time.monotonic() - started < 1.0:  # a producer that never stops
            for _ in range(50):
                ch.put(ev(n, pad=1000))
                n += 1
            await asyncio.sleep(0.001)
        tick_task.cancel()
        assert ch.drops > 0, "a wedged publisher must cause counted drops"
        assert ticks > 20, "the event loop kept running"
        # nothing is silently lost: accepted = written + dropped + still pending
        assert ch.events_in == n
        assert ch.events_in == ch.events_out + ch.drops + ch.pending_events()
        assert ch.queued_batches() <= 4 + ch.overflow_max
        await ch.close(time.monotonic() + 0.3)  # cannot finish: the rest is counted as dropped
        assert ch.events_in == ch.events_out + ch.drops
        await server.stop()

    run(main(), timeout=30)


def test_close_delivers_everything(short_tmp: Path) -> None:
    async def main():
        sock = short_tmp / "pub.sock"
        server = await UnixServer(sock).start()
        ch = chan(sock, batch_size=100, flush_interval=1.0, max_queued_batches=1000)
        ch.start()
        for i in range(5003):
            ch.put(ev(i, pad=50))
        await ch.close(time.monotonic() + 5)
        await until(lambda: server.eofs == 1, what="EOF after the last frame")
        assert server.event_ids() == list(range(5003))
        assert ch.drops == 0 and ch.events_out == 5003
        ch.put(ev(99999))  # after close: refused and counted, never silently lost
        assert ch.drops == 1
        await server.stop()

    run(main())


def test_close_waits_for_a_late_publisher_then_delivers(short_tmp: Path) -> None:
    async def main():
        sock = short_tmp / "pub.sock"
        ch = chan(sock)
        ch.start()
        for i in range(7):
            ch.put(ev(i))
        server = UnixServer(sock)

        async def late_start():
            await asyncio.sleep(0.3)
            await server.start()

        starter = asyncio.create_task(late_start())
        await ch.close(time.monotonic() + 5)
        await starter
        await until(lambda: server.eofs == 1, what="EOF")
        assert server.event_ids() == list(range(7)) and ch.drops == 0
        await server.stop()

    run(main())


def test_close_without_publisher_counts_everything_as_dropped(short_tmp: Path) -> None:
    async def main():
        ch = chan(short_tmp / "absent.sock")
        ch.start()
        for i in range(12):
            ch.put(ev(i))
        t0 = time.monotonic()
        await ch.close(t0 + 0.3)
        assert time.monotonic() - t0 < 2.0  # the deadline is honoured
        assert ch.drops == 12 and ch.events_out == 0

    run(main())


# ---- the worker runtime end to end: exchange stand-ins -> worker -> this socket ----

def test_worker_runtime_delivers_trades_and_instruments_and_stops_cleanly(short_tmp: Path) -> None:
    import socket as socketlib

    from aiohttp import web

    from shared.child import StatusLink
    from shared.settings import Settings
    from tests.conftest import FIXTURES
    from tests.unit.test_transport_rest import RestServer
    from tests.unit.test_transport_ws import WsServer, trade_frame
    from workers.runtime import Worker

    exchange_info = (FIXTURES / "rest" / "binance.json").read_text()

    async def ws_script(ws, n):
        for tid in range(1, 6):
            await ws.send_str(trade_frame(tid))
        await ws.send_str("garbage")

    async def rest_behavior(request, n):
        return web.Response(text=exchange_info, content_type="application/json",
                            headers={"X-MBX-USED-WEIGHT-1M": "20"})

    async def main():
        ws_server = await WsServer(ws_script).start()
        rest_server = await RestServer(rest_behavior).start()
        settings = Settings(
            run_dir=short_tmp, node_id="T",
            exchanges={"binance": {"enabled": True, "symbols": ["BTC-USDT"], "ws_url": ws_server.base,
                                   "rest_url": rest_server.base, "poll_interval": 0.2}},
            channel={"flush_interval": 0.01},
        )
        pub = await UnixServer(settings.publisher_socket).start()
        parent_sock, child_sock = socketlib.socketpair()
        worker = Worker("binance", settings)
        link = StatusLink(child_sock, "binance", beat_interval=0.1)
        run_task = asyncio.create_task(worker.run(link))
        reader, writer = await ipc.open_stream(parent_sock)
        assert (await ipc.read_frame(reader))["t"] == "ready"
        await until(lambda: len(pub.events()) == 5 and any(f["t"] == "instruments" for f in pub.frames[1:]),
                    what="trades and instruments at the publisher socket")
        beat = await ipc.read_frame(reader)
        while beat["stats"]["parse_errors"] == 0:
            beat = await ipc.read_frame(reader)
        stats = beat["stats"]
        assert set(stats) - {"loop_lag_ms"} == {
            "exchange", "events_out", "drops", "parse_errors", "rejected", "ws_connections", "ws_reconnects",
            "ws_stale", "rest_calls", "rest_errors", "last_message_at", "last_event_at", "connection", "stale",
            "circuit", "channel", "queued_batches", "last_error", "push_connections", "push_updates",
            # the trade stream runs on the market-data path (gap fill, resume)
            "subscription_failures", "book_gaps", "book_resyncs", "books", "md"}
        assert stats["exchange"] == "binance" and stats["connection"] == "connected"
        assert stats["channel"] == "connected" and stats["circuit"] == "CLOSED"
        assert stats["ws_connections"] == 1 and stats["rest_calls"] >= 1 and stats["parse_errors"] == 1
        inst = next(f for f in pub.frames[1:] if f["t"] == "instruments")
        assert abs(inst.pop("detected_at") - time.time() * 1000) < 10_000
        assert inst == {
            "t": "instruments", "exchange": "binance", "market": "spot", "full": True, "source": "rest_binance",
            "instruments": {
                "BTCUSDT": {"symbol": "BTC-USDT", "base": "BTC", "quote": "USDT", "market": "spot",
                            "status": "trading", "raw_status": "TRADING",
                            "url": "https://www.binance.com/en/trade/BTC_USDT"},
                "ETHUSDT": {"symbol": "ETH-USDT", "base": "ETH", "quote": "USDT", "market": "spot",
                            "status": "trading", "raw_status": "TRADING",
                            "url": "https://www.binance.com/en/trade/ETH_USDT"},
                "BCCBTC": {"symbol": "BCC-BTC", "base": "BCC", "quote": "BTC", "market": "spot",
                           "status": "halted", "raw_status": "BREAK",
                           "url": "https://www.binance.com/en/trade/BCC_BTC"}}}
        ipc.write_frame(writer, {"t": "stop"})
        assert await asyncio.wait_for(run_task, 10) == 0
        await link.close()
        await until(lambda: pub.eofs == 1, what="channel EOF after the graceful stop")
        assert [fields[3][fields[3].index("trade_id") + 1] for fields in pub.events()] == ["1", "2", "3", "4", "5"]
        writer.close()
        parent_sock.close()
        await pub.stop()
        await ws_server.stop()
        await rest_server.stop()

    run(main())


def test_worker_runtime_config_errors_exit_with_config_code(short_tmp: Path) -> None:
    import socket as socketlib

    from shared.child import StatusLink
    from shared.settings import Settings
    from shared.states import EXIT_CONFIG
    from workers.runtime import Worker

    async def main():
        for name, ex in [("deribit", {"deribit": {"enabled": True, "symbols": ["BTC-USDT"]}}),  # no adapter
                         # a listings-only adapter with listings off has nothing to collect
                         ("okx", {"okx": {"enabled": True, "symbols": ["BTC-USDT"], "listings": False}}),
                         ("binance", {"binance": {"enabled": True, "trades": False, "listings": False}})]:
            settings = Settings(run_dir=short_tmp, exchanges=ex)
            a, b = socketlib.socketpair()
            assert await Worker(name, settings).run(StatusLink(b, name)) == EXIT_CONFIG
            a.close()
            b.close()

    run(main())


def test_backpressure_yields_while_room_and_waits_bounded_when_full(short_tmp: Path) -> None:
    async def main():
        sock = short_tmp / "pub.sock"
        server = await UnixServer(sock, reading=False).start()  # a wedged publisher
        ch = chan(sock, batch_size=1, max_queued_batches=8, put_timeout=0.2)
        ch.start()
        t = time.monotonic()
        await ch.backpressure()  # empty queue: just a yield
        assert time.monotonic() - t < 0.1
        # fill the socket buffers and the queue (frames are big so the kernel buffer fills fast)
        for i in range(5000):
            ch.put(ev(i, pad=4000))
            if i % 50 == 0:
                await asyncio.sleep(0)
        await until(lambda: ch.queued_batches() > 4, what="queue over half full")
        t = time.monotonic()
        await ch.backpressure()  # full: waits for room, but never longer than put_timeout
        waited = time.monotonic() - t
        assert 0.15 <= waited < 1.0, waited
        assert ch.drops > 0  # beyond the bound, batches are dropped and counted
        await ch.close(time.monotonic() + 0.5)
        await server.stop()

    run(main())


def test_unacked_batches_are_sent_again_in_order_after_a_reconnect(short_tmp: Path) -> None:
    async def main():
        sock = short_tmp / "pub.sock"
        first = await UnixServer(sock, acking=False).start()  # takes batches, never confirms
        ch = chan(sock, flush_interval=0.05)
        ch.start()
        for i in range(25):
            ch.put(ev(i))
        await until(lambda: len(first.events()) == 25, what="3 batches at the first publisher")
        assert ch.stats()["unacked_batches"] == 3 and ch.events_acked == 0
        await first.stop()  # the publisher dies with them unconfirmed
        await until(lambda: not ch.connected, what="disconnect noticed")
        for i in range(25, 35):
            ch.put(ev(i))
        second = await UnixServer(sock).start()
        await until(lambda: ch.events_acked == 35, what="all acked by the second publisher")
        hello, *frames = second.frames
        assert hello["producer"] == first.frames[0]["producer"] == ch.producer  # same producer id
        # the unacknowledged batches first, in order, then the new one
        assert [f["seq"] for f in frames] == [1, 2, 3, 4]
        assert second.event_ids() == list(range(35))
        assert ch.stats()["unacked_batches"] == 0 and ch.batches_resent == 3 and ch.drops == 0
        await ch.close(time.monotonic() + 2)
        assert ch.unconfirmed == 0
        await second.stop()

    run(main())


def test_unacked_window_bounds_what_is_written(short_tmp: Path) -> None:
    async def main():
        sock = short_tmp / "pub.sock"
        server = await UnixServer(sock, acking=False).start()
        ch = PublisherChannel("binance", sock, ChannelSettings(batch_size=10, flush_interval=0.05,
                                                               max_queued_batches=100, max_unacked_batches=2))
        ch.start()
        for i in range(50):
            ch.put(ev(i))
        await until(lambda: len(server.events()) == 20, what="two batches (the window)")
        await asyncio.sleep(0.2)
        assert len(server.events()) == 20 and ch.queued_batches() == 3 and ch.drops == 0
        await ch.close(time.monotonic() + 0.3)  # never acked: counted as unconfirmed, the rest dropped
        assert ch.unconfirmed == 20 and ch.drops == 30
        await server.stop()

    run(main())
