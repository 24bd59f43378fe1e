"""The Redis password reaches Redis and nothing else: logs, stdout, status, metrics, heartbeat."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process
from tests.conftest import RedisServer, wait_until
from tests.integration.harness import CollectorProcess

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", ["url", "env", "file"])
def test_password_is_used_and_never_printed(tmp_path: Path, short_tmp: Path, how: str) -> None:
    password = "pw-" + secrets.token_hex(12)
    srv = RedisServer(tmp_path / "redis", password=password).start()
    sim_proc, sim_url = start_simulator_process()
    sim = SimulatorClient(sim_url)
    env = {"COLLECTOR_PUBLISHER__HEARTBEAT_INTERVAL": "1", "COLLECTOR_LOG_LEVEL": "DEBUG"}
    url = srv.url
    if how != "url":
        url = f"redis://127.0.0.1:{srv.port}/0"
        if how == "env":
            env["COLLECTOR_REDIS__PASSWORD"] = password
        else:
            pw_file = short_tmp / "redis.pw"
            pw_file.write_text(password + "\n")
            pw_file.chmod(0o600)
            env["COLLECTOR_REDIS__PASSWORD_FILE"] = str(pw_file)
    c = CollectorProcess(short_tmp / "run", url, sim_url, **env)
    try:
        c.start()
        r = srv.client()
        sim.set_trade_rate(50, "BTCUSDT")
        wait_until(lambda: r.xlen("md:trade:binance:spot:BTC-USDT") > 10, what="trades written with AUTH")
        wait_until(lambda: r.exists("node:heartbeat:TEST_NODE"), what="heartbeat")
        outputs = {
            "/status": c.http("/status")[1].decode(),
            "/metrics": c.http("/metrics")[1].decode(),
            "/health": c.http("/health")[1].decode(),
            "collectorctl status": c.ctl("status").stdout + c.ctl("status", "--json").stdout,
            "heartbeat": str(r.hgetall("node:heartbeat:TEST_NODE")),
        }
        sim.set_trade_rate(0)
        assert c.stop() == 0
        outputs["stdout"] = c.output()
        for log in (short_tmp / "run" / "logs").glob("*.log*"):
            outputs[log.name] = log.read_text(errors="replace")
        assert len(outputs) >= 8  # collector.log, publisher.log, binance.log among them
        for name, text in outputs.items():
            assert password not in text, f"password leaked in {name}"
    finally:
        c.kill_tree()
        stop_simulator_process(sim_proc)
        srv.kill()
