"""``collectorctl`` against a real control server (fake children behind it), ``collectorctl logs``
on real files (following rotation), and ``collector run`` with a bad config."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from collector.cli import collector_main, collectorctl_main
from collector.control import ControlServer
from shared.states import ProcessState
from tests.conftest import wait_until
from tests.unit.test_control_http import publisher_stats, worker_stats
from tests.unit.test_supervisor import Rig

S = ProcessState


class ServedRig:
    """A fake-process supervisor behind a real control socket, run in a background thread.

    A ticker plays the children: a process told to stop exits 0, a new one sends `ready`.
    """

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> "ServedRig":
        self._thread.start()
        assert self._started.wait(10), "control server did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        sup = self.rig.sup
        server = ControlServer(sup.settings.control_socket, sup.handle_command)
        await server.start()
        self._started.set()
        try:
            while not self._stop.is_set():
                for child in sup.children.values():
                    proc = child.process
                    if proc is not None and "TERM" in proc.signals and proc.exitcode is None:
                        proc.exit(0)
                    if child.state is S.STARTING:
                        sup.on_child_message(child, child.incarnation, {"t": "ready"})
                        stats = publisher_stats() if child.kind == "publisher" else worker_stats()
                        sup.on_child_message(child, child.incarnation, {"t": "beat", "stats": stats})
                self.rig.tick(0.02)
                await asyncio.sleep(0.02)
        finally:
            await server.close()


def make_rig(tmp: Path) -> Rig:
    rig = Rig(tmp, beat_timeout=1e9, stable_after=1e9)
    rig.sup.started_at_wall -= 3600
    rig.running("publisher")
    rig.running()
    rig.beat("publisher", **publisher_stats())
    rig.beat(**worker_stats())
    return rig


def config_file(tmp: Path) -> str:
    path = tmp / "collector.yaml"
    path.write_text(f"run_dir: {tmp}\n")
    return str(path)


def ctl(tmp: Path, *args: str) -> int:
    return collectorctl_main(["--config", config_file(tmp), *args])


def test_status_table_and_exit_code_0_when_all_running(short_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    with ServedRig(make_rig(short_tmp)):
        code = ctl(short_tmp, "status")
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "RSS", "FDS", "EV/S", "DROPS",
                                "LAST-EVENT", "CONN/CIRCUIT", "LAST-ERROR"]
    binance = next(line for line in lines if line.startswith("binance"))
    assert "RUNNING" in binance and "connected/CLOSED" in binance
    publisher = next(line for line in lines if line.startswith("publisher"))
    assert "redis up" in publisher
    assert lines[-1] == "health: healthy"


def test_status_exit_3_when_a_child_is_not_running_and_names_filter(
        short_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    rig = make_rig(short_tmp)
    rig.proc().exit(1)
    rig.tick()
    rig.child().next_start_at = rig.clock() + 3600  # keep it in BACKOFF while we look
    with ServedRig(rig):
        code_all = ctl(short_tmp, "status")
        out = capsys.readouterr().out
        code_pub = ctl(short_tmp, "status", "publisher")
        out_pub = capsys.readouterr().out
        code_unknown = ctl(short_tmp, "status", "nope")
        err_unknown = capsys.readouterr().err
        code_json = ctl(short_tmp, "status", "--json", "binance")
        out_json = capsys.readouterr().out
    assert code_all == 3
    row = next(line for line in out.splitlines() if line.startswith("binance"))
    assert "BACKOFF" in row and "exited unexpectedly: exit 1" in row
    assert "health: unhealthy - no exchange worker RUNNING; binance: BACKOFF (exit 1; restart in 3600s)" in out
    assert code_pub == 0 and "binance" not in out_pub.split("health:")[0]
    assert code_unknown == 4 and "unknown name 'nope'" in err_unknown
    assert code_json == 3
    data = json.loads(out_json)
    assert list(data["children"]) == ["binance"]
    assert data["children"]["binance"]["state"] == "BACKOFF"
    assert data["children"]["binance"]["restarts"] == 1
    assert data["health"]["status"] == "unhealthy"


def test_status_exit_4_when_unreachable_names_the_socket(short_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    code = ctl(short_tmp, "status")
    err = capsys.readouterr().err
    assert code == 4
    assert str(short_tmp / "NODE_A.ctl.sock") in err and "unreachable" in err
    assert ctl(short_tmp, "restart", "binance") == 4


def test_restart_stop_start_against_a_running_control_server(
        short_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    rig = make_rig(short_tmp)

    def state(name: str = "binance") -> dict[str, Any]:
        ctl(short_tmp, "status", "--json", name)
        return json.loads(capsys.readouterr().out)["children"][name]

    with ServedRig(rig):
        assert ctl(short_tmp, "stop", "binance") == 0
        assert "binance: stopping" in capsys.readouterr().out
        wait_until(lambda: state()["state"] == "STOPPED", timeout=10, what="STOPPED")
        assert ctl(short_tmp, "status") == 3
        capsys.readouterr()

        assert ctl(short_tmp, "start", "binance") == 0
        assert "binance: starting" in capsys.readouterr().out
        first = wait_until(lambda: (s := state())["state"] == "RUNNING" and s, timeout=10, what="RUNNING")

        assert ctl(short_tmp, "restart", "binance") == 0
        assert "stopping, then starting a fresh process" in capsys.readouterr().out
        second = wait_until(lambda: (s := state())["state"] == "RUNNING" and s["pid"] != first["pid"] and s,
                            timeout=10, what="a fresh RUNNING process")
        assert second["total_restarts"] == 0, "operator restarts are not crashes"

        assert ctl(short_tmp, "restart", "nope") != 0
        assert "unknown name 'nope'" in capsys.readouterr().err
        assert ctl(short_tmp, "status") == 0


def test_logs_tail_n_and_missing_file(short_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    log_dir = short_tmp / "logs"
    log_dir.mkdir()
    (log_dir / "binance.log").write_text("".join(f"line {i}\n" for i in range(30)))
    assert ctl(short_tmp, "logs", "binance", "-n", "3") == 0
    assert capsys.readouterr().out.splitlines() == ["line 27", "line 28", "line 29"]
    assert ctl(short_tmp, "logs", "kraken") == 1
    assert "no log file at" in capsys.readouterr().err
    assert ctl(short_tmp, "logs", "../etc/passwd") == 1


def test_logs_follow_across_rotation(short_tmp: Path) -> None:
    log_dir = short_tmp / "logs"
    log_dir.mkdir()
    path = log_dir / "binance.log"
    path.write_text("old 1\nold 2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env.update({"COLLECTOR_RUN_DIR": str(short_tmp), "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from collector.cli import collectorctl_main; sys.exit(collectorctl_main())",
         "logs", "binance", "-n", "1", "-f"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(Path(__file__).parents[2]))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x.rstrip("\n")) for x in proc.stdout], daemon=True).start()

    def next_line() -> str:
        try:
            return lines.get(timeout=10)
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"no output; stderr: {proc.stderr.read()}") from None

    try:
        assert next_line() == "old 2"
        time.sleep(0.5)  # let it reach the follow loop
        with open(path, "a") as f:
            f.write("new before rotation\n")
        assert next_line() == "new before rotation"
        os.rename(path, log_dir / "binance.log.1")
        with open(log_dir / "binance.log.1", "a") as f:
            f.write("late line in the rotated file\n")
        path.write_text("first line of the new file\n")
        got = [next_line(), next_line()]
        assert got == ["late line in the rotated file", "first line of the new file"]
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


def test_collector_run_with_bad_config_exits_2_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"run_dir: {tmp_path}\nsupervisor:\n  max_restarts: 0\n")
    assert collector_main(["run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "supervisor.max_restarts" in err[0], err

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("supervisr:\n  max_restarts: 3\n")
    assert collector_main(["run", "--config", str(unknown)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["config error: supervisr: unknown setting"], err

    assert collector_main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err

    # Deribit has market data only: enabling it without market data cannot work
    md_only = tmp_path / "deribit.yaml"
    md_only.write_text(f"run_dir: {tmp_path}\nexchanges:\n  deribit:\n    enabled: true\n")
    assert collector_main(["run", "--config", str(md_only)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error: exchanges.deribit.market_data:"), err

    none = tmp_path / "none.yaml"
    none.write_text(f"run_dir: {tmp_path}\nexchanges:\n  binance:\n    enabled: false\n")
    assert collector_main(["run", "--config", str(none)]) == 2
    assert capsys.readouterr().err.strip() == "config error: exchanges: no exchange is enabled"
    assert collectorctl_main(["--config", str(bad), "status"]) == 2


def test_collector_run_refuses_a_second_instance(short_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    rig = make_rig(short_tmp)
    assert rig.sup.acquire() is None
    try:
        assert collector_main(["run", "--run-dir", str(short_tmp), "--http-port", "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert err[0].startswith(f"another collector with node id NODE_A is running (pid {os.getpid()})")
    finally:
        rig.sup.release()
