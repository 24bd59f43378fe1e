"""A SIGKILLed worker cannot wedge the others: each worker has its own channel to the publisher.

Real processes: the publisher, two Binance workers (different symbols, the same simulator) and a
real redis-server; the test plays the parent on their status links. Worker A streams fast (so a
kill lands mid-write with high probability) and is SIGKILLed; worker B's trades must keep flowing
and every trade B received must be in Redis.
"""

from __future__ import annotations

import multiprocessing
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process
from shared import ipc
from shared.settings import Settings, load_settings
from tests.conftest import wait_until
from tests.integration.harness import ranges_to_ids, trade_ids
from tests.integration.test_publisher import PublisherProc

pytestmark = pytest.mark.integration


def _worker_process(exchange: str, settings: Settings, sock: socket.socket) -> None:
    from workers.runtime import worker_main

    sys.exit(worker_main(exchange, settings, sock))


class WorkerProc:
    def __init__(self, settings: Settings) -> None:
        parent_end, child_end = socket.socketpair()
        self.proc = multiprocessing.get_context("spawn").Process(
            target=_worker_process, args=("binance", settings, child_end), daemon=True)
        self.proc.start()
        child_end.close()
        self.link = parent_end
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while (msg := ipc.recv_msg(self.link)) is not None:
                if msg.get("t") == "ready":
                    self.ready.set()
        except (OSError, ipc.FrameError):
            pass

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.link.close()


def _settings(tmp: Path, redis_url: str, sim_url: str, symbols: list[str]) -> Settings:
    return load_settings(
        run_dir=tmp / "run", log_dir=tmp / "logs",
        redis={"url": redis_url},
        exchanges={"binance": {"rest_url": sim_url, "ws_url": sim_url.replace("http://", "ws://"),
                               "symbols": symbols, "listings": False}},
    )


def test_sigkill_of_one_worker_does_not_stall_another(redis_server, short_tmp) -> None:
    sim_proc, sim_url = start_simulator_process()
    sim = SimulatorClient(sim_url)
    r = redis_server.client()
    procs: list = []
    try:
        pub = PublisherProc(_settings(short_tmp, redis_server.url, sim_url, ["BTC-USDT"])).wait_ready()
        procs.append(pub)
        a = WorkerProc(_settings(short_tmp, redis_server.url, sim_url, ["BTC-USDT"]))
        b = WorkerProc(_settings(short_tmp, redis_server.url, sim_url, ["ETH-USDT"]))
        procs += [a, b]
        assert a.ready.wait(20) and b.ready.wait(20)
        wait_until(lambda: sim.stats()["connections"]["open"] >= 2, what="both workers subscribed")
        sim.set_trade_rate(3000, "BTCUSDT")
        sim.set_trade_rate(200, "ETHUSDT")
        btc, eth = "md:trade:binance:spot:BTC-USDT", "md:trade:binance:spot:ETH-USDT"
        wait_until(lambda: r.xlen(btc) > 1000 and r.xlen(eth) > 50, what="both streaming")

        a.kill()  # SIGKILL, likely in the middle of writing a frame to its channel
        # B keeps publishing: its stream grows in every second that follows
        for _ in range(3):
            n = r.xlen(eth)
            wait_until(lambda: r.xlen(eth) > n + 50, timeout=3, what="worker B still publishing")
        sim.set_trade_rate(0)
        time.sleep(0.5)
        want = ranges_to_ids(sim.stats()["symbols"]["ETHUSDT"]["delivered_ranges"])
        wait_until(lambda: r.xlen(eth) >= len(want), timeout=10, what="all of B's trades stored")
        assert trade_ids(r, eth) == want
        assert b.proc.is_alive() and pub.proc.is_alive()
    finally:
        for p in procs:
            p.kill()
        stop_simulator_process(sim_proc)
