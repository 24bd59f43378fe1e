"""The Redis password reaches Redis and nothing else: logs, stdout, status, metrics, heartbeat,
error messages (a wrong password, a TLS failure: test_security.py) and crash dumps; every file
under the run directory is scanned."""

from __future__ import annotations

import secrets
import signal
import stat
from pathlib import Path

import pytest

from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process
from tests.conftest import RedisServer, wait_until
from tests.integration.harness import CollectorProcess

pytestmark = pytest.mark.integration


def run_dir_files(run_dir: Path) -> dict[str, str]:
    """Every regular file under the run directory (logs, rotated logs, stdout, lock, crash dumps)."""
    out: dict[str, str] = {}
    for path in sorted(run_dir.rglob("*")):
        if stat.S_ISREG(path.lstat().st_mode):
            out[str(path.relative_to(run_dir))] = path.read_bytes().decode("utf-8", "replace")
    return out


def collect_outputs(c: CollectorProcess, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Everything the running collector shows: HTTP, collectorctl, stdout and every run-dir file."""
    outputs = {
        "/status": c.http("/status")[1].decode(),
        "/metrics": c.http("/metrics")[1].decode(),
        "/health": c.http("/health")[1].decode(),
        "collectorctl status": c.ctl("status").stdout + c.ctl("status", "--json").stdout,
        "stdout": c.output(),
        **(extra or {}),
    }
    for name, text in run_dir_files(c.run_dir).items():
        outputs[f"file {name}"] = text
    return outputs


def assert_secret_absent(c: CollectorProcess, secret: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    outputs = collect_outputs(c, extra)
    assert any(name.startswith("file logs/publisher.log") for name in outputs), sorted(outputs)
    for name, text in outputs.items():
        assert secret not in text, f"password leaked in {name}"
    return outputs


@pytest.mark.parametrize("how", ["url", "env", "file"])
def test_password_is_used_and_never_printed(tmp_path: Path, short_tmp: Path, how: str) -> None:
    password = "pw-" + secrets.token_hex(12)
    sim_proc, sim_url = start_simulator_process()
    srv = RedisServer(tmp_path / "redis", password=password)
    sim = SimulatorClient(sim_url)
    env = {"COLLECTOR_PUBLISHER__HEARTBEAT_INTERVAL": "1", "COLLECTOR_LOG_LEVEL": "DEBUG",
           "COLLECTOR_SUPERVISOR__BACKOFF_INITIAL": "0.5"}
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
        srv.start()
        c.start()
        r = srv.client()
        sim.set_trade_rate(50, "BTCUSDT")
        wait_until(lambda: r.xlen("md:trade:binance:spot:BTC-USDT") > 10, what="trades written with AUTH")
        wait_until(lambda: r.exists("node:heartbeat:TEST_NODE"), what="heartbeat")
        if how == "url":
            # crashes: the publisher (which holds the password) and a worker die by SIGSEGV;
            # faulthandler writes their stacks into their logs, scanned below with everything else
            for name in ("publisher", "binance"):
                old = c.kill_child(name, signal.SIGSEGV)
                wait_until(lambda: (ch := c.child(name))["state"] == "RUNNING" and ch["pid"] != old, timeout=20,
                           what=f"{name} restarted after SIGSEGV")
            n = r.xlen("md:trade:binance:spot:BTC-USDT")
            wait_until(lambda: r.xlen("md:trade:binance:spot:BTC-USDT") > n + 10, what="trades after the crashes")
            dumps = [p for p in (c.run_dir / "logs").glob("*.log*") if "Fatal Python error" in p.read_text(errors="replace")]
            assert {p.name.split(".")[0] for p in dumps} >= {"publisher", "binance"}, "no crash dumps written"
        outputs = assert_secret_absent(c, password, extra={"heartbeat": str(r.hgetall("node:heartbeat:TEST_NODE"))})
        sim.set_trade_rate(0)
        assert c.stop() == 0
        # the HTTP server is gone; the files (final log lines included) and stdout remain
        final = {f"file {name}": text for name, text in run_dir_files(c.run_dir).items()}
        final["stdout"] = c.output()
        assert len(outputs) >= 8  # collector.log, publisher.log, binance.log among them
        for name, text in final.items():
            assert password not in text, f"password leaked in {name} (after stop)"
    finally:
        c.kill_tree()
        stop_simulator_process(sim_proc)
        srv.kill()


def test_a_wrong_password_is_reported_without_the_password(tmp_path: Path, short_tmp: Path) -> None:
    right = "right-" + secrets.token_hex(12)
    wrong = "wrong-" + secrets.token_hex(12)
    sim_proc, sim_url = start_simulator_process()
    srv = RedisServer(tmp_path / "redis", password=right)
    c = CollectorProcess(short_tmp / "run", f"redis://:{wrong}@127.0.0.1:{srv.port}/0", sim_url,
                         COLLECTOR_LOG_LEVEL="DEBUG", COLLECTOR_PUBLISHER__RETRY_MAX="0.5",
                         COLLECTOR_SUPERVISOR__STOP_TIMEOUT="3", COLLECTOR_SUPERVISOR__SHUTDOWN_TIMEOUT="6")
    try:
        srv.start()
        c.start()
        SimulatorClient(sim_url).set_trade_rate(50, "BTCUSDT")
        pub = wait_until(lambda: (p := c.child("publisher")).get("last_error") and p, what="auth error in /status")
        assert "WRONGPASS" in pub["last_error"] and "***" in pub["last_error"], pub["last_error"]
        assert pub["state"] == "RUNNING" and c.status()["publisher"]["redis"] == "down"
        assert c.http_json("/health")["status"] in ("degraded", "unhealthy")
        assert srv.client().dbsize() == 0  # nothing written without authentication
        assert_secret_absent(c, wrong)
        c.stop()  # the buffered trades cannot be written: the exit code may say so
        for name, text in run_dir_files(c.run_dir).items():
            assert wrong not in text and right not in text, f"password in {name}"
    finally:
        c.kill_tree()
        stop_simulator_process(sim_proc)
        srv.kill()
