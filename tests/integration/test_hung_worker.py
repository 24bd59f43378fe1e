"""A worker whose event loop is blocked (alive, but stuck) is found by its missing heartbeat,
dumped with faulthandler into its log, SIGKILLed and restarted, while the parent keeps answering.
The parent itself dumps its stacks into collector.log on the same signal, and carries on.

Real processes throughout: `collector run` with its publisher and Binance worker, the simulator
over real sockets, a real redis-server (with a password, to check the dump leaks nothing). The
test hook ``testing.hang_exchange`` makes the worker's first process block its event loop with
``time.sleep`` inside a task, a few seconds after it is ready.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
from pathlib import Path

import pytest

from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process
from tests.conftest import RedisServer, wait_until
from tests.integration.harness import CollectorProcess

pytestmark = pytest.mark.integration

BTC = "md:trade:binance:spot:BTC-USDT"
BEAT_TIMEOUT_S = 5.0


@pytest.fixture
def sim():
    proc, url = start_simulator_process()
    try:
        yield SimulatorClient(url)
    finally:
        stop_simulator_process(proc)


@pytest.fixture
def secret_redis(short_tmp: Path):
    srv = RedisServer(short_tmp / "redis", password="hung-" + secrets.token_hex(12)).start()
    try:
        yield srv
    finally:
        srv.kill()


def _poll_parent(c: CollectorProcess) -> dict:
    """One round of the operator surface, each with a short timeout; all must answer."""
    code, _ = c.http("/health", timeout=2.0)
    assert code in (200, 503), f"/health answered {code}"
    status = c.http_json("/status", timeout=2.0)
    res = c.ctl("--timeout", "2", "status", timeout=15)
    # exit 0 = all RUNNING, 3 = one is not (BACKOFF/STARTING after the kill); both are answers
    assert res.returncode in (0, 3), f"collectorctl status: {res.returncode} {res.stderr}"
    assert re.search(r"^binance\s", res.stdout, re.M), res.stdout
    return status["children"]["binance"]


def test_blocked_worker_is_dumped_killed_and_restarted_while_the_parent_answers(
        short_tmp: Path, secret_redis: RedisServer, sim: SimulatorClient) -> None:
    r = secret_redis.client()
    sim.set_trade_rate(50, "BTCUSDT")
    c = CollectorProcess(
        short_tmp / "run", secret_redis.url, sim.base_url,
        COLLECTOR_EXCHANGES__BINANCE__LISTINGS="false",
        COLLECTOR_SUPERVISOR__BEAT_TIMEOUT=str(BEAT_TIMEOUT_S),
        COLLECTOR_SUPERVISOR__HUNG_DUMP_GRACE="0.5",
        COLLECTOR_SUPERVISOR__BACKOFF_INITIAL="0.5",
        COLLECTOR_TESTING__HANG_EXCHANGE="binance",
        COLLECTOR_TESTING__HANG_AFTER_S="3",
    )
    try:
        c.start()
        before = c.child("binance")
        hung_pid, publisher_pid = before["pid"], c.child("publisher")["pid"]
        wait_until(lambda: r.xlen(BTC) > 0, timeout=15, what="trades before the hang")

        # throughout the hang, the kill and the restart, every poll of the parent answers
        seen_hang = False

        def restarted() -> dict | None:
            nonlocal seen_hang
            st = _poll_parent(c)
            if st["pid"] == hung_pid and (st["beat_age_s"] or 0) >= 1.5:
                seen_hang = True  # the stuck loop, observed while it is stuck
            if st["state"] == "RUNNING" and st["pid"] not in (None, hung_pid):
                return st
            return None

        st = wait_until(restarted, timeout=40, interval=0.2, what="binance replaced after its hang")
        assert seen_hang, "the hang was observed through /status while it lasted"

        assert st["hung_kills"] == 1 and st["restarts"] == 1 and st["total_restarts"] == 1
        assert st["last_exit"].startswith("killed by SIGKILL (hung: no heartbeat for")
        log_file = c.log_file("binance")
        assert st["last_dump"]["pid"] == hung_pid and st["last_dump"]["file"] == str(log_file)
        assert st["last_dump"]["signal"] == "SIGUSR1"
        pub = c.child("publisher")
        assert pub["pid"] == publisher_pid and pub["hung_kills"] == 0, "only the worker was touched"
        metrics = c.http("/metrics")[1].decode().splitlines()
        assert 'collector_child_hung_kills_total{name="binance"} 1.0' in metrics
        assert 'collector_child_hung_kills_total{name="publisher"} 0.0' in metrics

        # the dump is the product here: the blocked frame, in the worker's own log
        text = log_file.read_text(errors="replace")
        m = re.search(r"^(Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):\n(?:  File .*\n)+",
                      text, re.M)
        assert m, f"no faulthandler dump in {log_file}:\n{text[-3000:]}"
        dump = text[m.start():]
        assert re.search(r'File ".*workers/runtime\.py", line \d+ in _block_event_loop_forever', dump)
        assert "in _hang_after" in dump
        assert secret_redis.password not in text, "no secret in the worker's log or its dump"

        # trades keep reaching Redis from the replacement
        n = r.xlen(BTC)
        wait_until(lambda: r.xlen(BTC) > n + 20, timeout=20, what="trades after the restart")
        assert _poll_parent(c)["hung_kills"] == 1, "the replacement (hang_once) runs normally"

        # the parent dumps its own stacks on the same signal (an operator's `kill -USR1`) and runs on
        assert c.proc is not None
        os.kill(c.proc.pid, signal.SIGUSR1)
        parent_log = c.log_file("collector")
        wait_until(lambda: "(most recent call first)" in parent_log.read_text(errors="replace"),
                   timeout=10, what="the parent's stack dump in collector.log")
        assert re.search(r'File ".*collector/supervisor\.py", line \d+ in main', parent_log.read_text())
        assert _poll_parent(c)["state"] == "RUNNING"
        sim.set_trade_rate(0)
        assert c.stop() == 0
    except (AssertionError, subprocess.TimeoutExpired):
        print(c.output()[-4000:])
        for name in ("publisher", "binance"):
            path = c.log_file(name)
            print(f"==> {path} <==\n" + (path.read_text(errors="replace")[-3000:] if path.exists() else ""))
        raise
    finally:
        c.kill_tree()
