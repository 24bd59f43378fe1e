"""Drive the real collector as a user would: spawn `collector run`, talk to it with
`collectorctl`, the control socket and HTTP, and read what reached Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import base_env, free_port, wait_until


class CollectorProcess:
    """`python -m collector run` in its own process group with a private run dir."""

    def __init__(self, run_dir: Path, redis_url: str, sim_url: str | None = None, **env: str) -> None:
        self.run_dir = run_dir
        self.http_port = free_port()
        self.env = base_env(run_dir, redis_url, COLLECTOR_HTTP__PORT=str(self.http_port), COLLECTOR_NODE_ID="TEST_NODE")
        if sim_url is not None:
            ws = sim_url.replace("http://", "ws://")
            self.env.update({
                "COLLECTOR_EXCHANGES__BINANCE__REST_URL": sim_url,
                "COLLECTOR_EXCHANGES__BINANCE__WS_URL": ws,
            })
        self.env.update(env)
        self.proc: subprocess.Popen | None = None
        self.stdout_path = run_dir / "collector.stdout"

    # ---- lifecycle ----
    def start(self, wait_running: bool = True, timeout: float = 30.0) -> "CollectorProcess":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.stdout_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "run"], env=self.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        if wait_running:
            self.wait_all_running(timeout)
        return self

    def wait_all_running(self, timeout: float = 30.0) -> dict:
        def ok() -> dict | None:
            self._assert_alive()
            st = self.status_or_none()
            if st and st.get("children") and all(c["state"] == "RUNNING" for c in st["children"].values()):
                return st
            return None

        return wait_until(ok, timeout=timeout, interval=0.1, what="all children RUNNING")

    def _assert_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"collector exited with {self.proc.returncode}:\n{self.output()[-4000:]}")

    def stop(self, timeout: float = 40.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            raise AssertionError("collector did not exit after SIGTERM")

    def kill_tree(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def output(self) -> str:
        try:
            return self.stdout_path.read_text(errors="replace")
        except OSError:
            return ""

    # ---- operator surface ----
    def ctl(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", "import sys; from collector.cli import collectorctl_main; sys.exit(collectorctl_main())", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )

    def status_or_none(self) -> dict | None:
        try:
            return self.http_json("/status", timeout=2.0)
        except (OSError, ValueError):
            return None

    def status(self) -> dict:
        return self.http_json("/status")

    def child(self, name: str) -> dict:
        return self.status()["children"][name]

    def http(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def http_json(self, path: str, timeout: float = 5.0) -> Any:
        code, body = self.http(path, timeout)
        return json.loads(body)

    def kill_child(self, name: str, sig: int = signal.SIGKILL) -> int:
        pid = self.child(name)["pid"]
        os.kill(pid, sig)
        return pid

    def log_file(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"


def stream_entries(client, stream: str) -> list[dict[str, str]]:
    return [fields for _id, fields in client.xrange(stream, "-", "+")]


def trade_ids(client, stream: str) -> list[int]:
    return [int(f["trade_id"]) for f in stream_entries(client, stream)]


def ranges_to_ids(ranges: list[list[int]]) -> list[int]:
    out: list[int] = []
    for a, b in ranges:
        out.extend(range(a, b + 1))
    return out


def delivered_ids(sim, symbol: str) -> list[int]:
    """The trade ids the simulator delivered to at least one subscriber (its own record)."""
    s = sim.stats()["symbols"].get(symbol)
    return ranges_to_ids(s["delivered_ranges"]) if s else []


def settle_tape(client, sim, symbol: str, stream: str, timeout: float = 30.0) -> tuple[list[int], list[int]]:
    """Stop ``symbol``'s trades, wait until Redis holds as many as were delivered:
    (ids the simulator delivered, ids in the stream in stream order)."""
    sim.set_trade_rate(0, symbol)
    time.sleep(0.5)
    want = delivered_ids(sim, symbol)
    wait_until(lambda: client.xlen(stream) >= len(want), timeout=timeout,
               what=f"{len(want)} delivered trades in {stream}")
    time.sleep(0.5)
    return want, trade_ids(client, stream)


def assert_exactly_once_in_order(want: list[int], got: list[int]) -> None:
    """Every delivered trade stored once, none extra, in order."""
    assert len(got) == len(set(got)), f"{len(got) - len(set(got))} duplicated"
    assert sorted(got) == want, f"{len(set(want) - set(got))} lost, {len(set(got) - set(want))} extra"
    assert got == want, "out of order"


def wait_stream_len(client, stream: str, n: int, timeout: float = 20.0) -> int:
    return wait_until(lambda: (client.xlen(stream) >= n) and client.xlen(stream), timeout=timeout,
                      what=f"{n} entries in {stream} (have {client.xlen(stream)})")


def now_ms() -> int:
    return time.time_ns() // 1_000_000
