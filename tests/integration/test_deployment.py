"""supervisord.conf and the systemd unit, exercised for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, base_env, free_port, wait_until

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _ctl(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "collectorctl"), *args], env=env, capture_output=True, text=True, timeout=20)


def test_supervisord_runs_the_collector_and_stops_it_cleanly(short_tmp: Path, redis_server) -> None:
    assert (BIN / "supervisord").exists(), "supervisor is a dependency: supervisord must be in the venv"
    conf = short_tmp / "supervisord.conf"
    shutil.copy(ROOT / "supervisord.conf", conf)  # the file as shipped; %(here)s makes it relocatable
    (short_tmp / "var").mkdir()
    env = base_env(short_tmp / "run", redis_server.url, COLLECTOR_HTTP__PORT=str(free_port()),
                   COLLECTOR_NODE_ID="SUPD",
                   # no simulator here: point the exchange at a closed local port; the worker still runs
                   COLLECTOR_EXCHANGES__BINANCE__REST_URL=f"http://127.0.0.1:{free_port()}",
                   COLLECTOR_EXCHANGES__BINANCE__WS_URL=f"ws://127.0.0.1:{free_port()}")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    subprocess.run([str(BIN / "supervisord"), "-c", str(conf)], env=env, check=True, timeout=20)
    try:
        res = wait_until(lambda: (r := _ctl(env, "status")).returncode == 0 and r, timeout=40,
                         what="collectorctl status exit 0 under supervisord")
        assert "publisher" in res.stdout and "binance" in res.stdout and "RUNNING" in res.stdout
        # supervisord calls it RUNNING once it has been up startsecs (5 s)
        wait_until(lambda: "RUNNING" in subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(conf), "status", "collector"],
            env=env, capture_output=True, text=True, timeout=20).stdout, timeout=20, what="supervisord RUNNING")
        stop = subprocess.run([str(BIN / "supervisorctl"), "-c", str(conf), "stop", "collector"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert "stopped" in stop.stdout, stop.stdout + stop.stderr
        # a clean stop: supervisord saw exit status 0 (not a SIGKILL after stopwaitsecs)
        log = (short_tmp / "var" / "supervisord.log").read_text()
        assert "stopped: collector (exit status 0)" in log, log[-2000:]
        assert _ctl(env, "status").returncode == 4  # collector gone -> unreachable
    finally:
        subprocess.run([str(BIN / "supervisorctl"), "-c", str(conf), "shutdown"], env=env,
                       capture_output=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (ROOT / "systemd" / "collector.service").read_text()
    for key in ("Restart=always", "KillMode=mixed", "MemoryMax=", "NoNewPrivileges=yes",
                "ProtectSystem=strict", "ReadWritePaths=/run/collector /var/log/collector"):
        assert key in unit
    # verify needs an existing executable and user on this machine; everything else as shipped
    local = unit.replace("/opt/collector/.venv/bin/collector", str(BIN / "collector"))
    local = local.replace("User=collector", "User=root").replace("Group=collector", "Group=root")
    path = tmp_path / "collector.service"
    path.write_text(local)
    res = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
