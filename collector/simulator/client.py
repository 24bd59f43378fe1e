"""Synchronous control client for the simulator (standard library only) and a process launcher.

    proc, base_url = start_simulator_process()
    sim = SimulatorClient(base_url)
    sim.add_symbol("NEWUSDT", "NEW", "USDT")        # -> {"visible_at_ms": ..., ...}
    sim.set_trade_rate(50, "BTCUSDT")
    ws = sim.ws_url + "/stream?streams=btcusdt@trade"
    ...
    stop_simulator_process(proc)
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Iterable, Sequence

READY_PREFIX = "SIMULATOR READY "


class SimulatorError(RuntimeError):
    """A control call failed (HTTP error status or unreachable simulator)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SimulatorClient:
    """One method per /_sim/ control endpoint; every method returns the decoded JSON answer."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    @property
    def ws_url(self) -> str:
        """Same host:port with the ws:// scheme (append /stream?streams=... or /ws/<stream>)."""
        if self.base_url.startswith("https://"):
            return "wss://" + self.base_url[len("https://"):]
        return "ws://" + self.base_url.split("://", 1)[-1]

    # ---------------------------------------------------------------- transport
    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            try:
                detail = json.loads(detail).get("error", detail)
            except (ValueError, AttributeError):
                pass
            raise SimulatorError(f"{method} {path}: HTTP {exc.code}: {detail}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise SimulatorError(f"{method} {path}: simulator unreachable: {exc}") from None

    def _post(self, endpoint: str, /, **body: Any) -> Any:
        return self._call("POST", endpoint, body)

    # ---------------------------------------------------------------- state
    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/stats")

    def reset(self, drop_connections: bool = True) -> dict[str, Any]:
        return self._post("/_sim/reset", drop_connections=drop_connections)

    def config(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/config")["config"]

    def configure(self, **values: Any) -> dict[str, Any]:
        """Change limits at run time, e.g. ``configure(ping_interval=0.5, weight_limit=0)``."""
        return self._call("POST", "/_sim/config", values)["config"]

    # ---------------------------------------------------------------- symbols
    def add_symbol(self, symbol: str, base: str, quote: str, status: str = "TRADING",
                   market: str = "spot") -> dict[str, Any]:
        return self._post("/_sim/symbols/add", symbol=symbol, base=base, quote=quote, status=status,
                          market=market)

    def set_symbol_status(self, symbol: str, status: str, market: str = "spot") -> dict[str, Any]:
        return self._post("/_sim/symbols/status", symbol=symbol, status=status, market=market)

    def remove_symbol(self, symbol: str, market: str = "spot") -> dict[str, Any]:
        return self._post("/_sim/symbols/remove", symbol=symbol, market=market)

    def add_filler_symbols(self, count: int, quote: str = "USDT", market: str = "spot") -> dict[str, Any]:
        return self._post("/_sim/symbols/filler", count=count, quote=quote, market=market)

    def list_symbols(self, market: str = "spot") -> list[dict[str, Any]]:
        return self._call("GET", f"/_sim/symbols?market={market}")["symbols"]

    # ---------------------------------------------------------------- trades
    def set_trade_rate(self, rate: float, symbol: str | None = None) -> dict[str, Any]:
        """Trades per second for one symbol (or every listed spot symbol); 0 stops."""
        return self._post("/_sim/trades/rate", rate=rate, symbol=symbol)

    def burst(self, symbol: str, count: int) -> dict[str, Any]:
        """``count`` trades at once; the answer has ``first_id``/``last_id``."""
        return self._post("/_sim/trades/burst", symbol=symbol, count=count)

    def set_duplicate(self, enabled: bool = True) -> dict[str, Any]:
        """Send every trade batch twice (A B C A B C)."""
        return self._post("/_sim/trades/duplicate", enabled=enabled)

    def start_firehose(self, symbols: Sequence[str] | None = None, count: int | None = None,
                       batch: int = 200) -> dict[str, Any]:
        """Trades as fast as the subscribers read them (optionally stop after ``count``)."""
        return self._post("/_sim/trades/firehose", symbols=list(symbols) if symbols else None,
                          count=count, batch=batch)

    def stop_firehose(self) -> dict[str, Any]:
        return self._post("/_sim/trades/firehose/stop")

    # ---------------------------------------------------------------- websocket faults
    def drop_connections(self) -> dict[str, Any]:
        return self._post("/_sim/ws/drop")

    def stall(self, seconds: float | None = None) -> dict[str, Any]:
        """Send nothing (no trades, no pings, no replies) but keep sockets open; None = until unstall."""
        return self._post("/_sim/ws/stall", seconds=seconds)

    def unstall(self) -> dict[str, Any]:
        return self._post("/_sim/ws/unstall")

    def send_malformed(self, kinds: Iterable[str] = ("garbage", "truncated", "binary", "oversized"),
                       count: int = 1, size: int = 5 * 1024 * 1024) -> dict[str, Any]:
        return self._post("/_sim/ws/malformed", kinds=list(kinds), count=count, size=size)

    def server_shutdown(self, close_after_s: float | None = None) -> dict[str, Any]:
        return self._post("/_sim/ws/shutdown", close_after_s=close_after_s)

    # ---------------------------------------------------------------- REST faults
    def rest_fault(self, kind: str, path: str = "*", count: int | None = None,
                   duration_s: float | None = None, retry_after: int = 60, status: int = 503,
                   hang_s: float = 30.0, body: str | None = None) -> dict[str, Any]:
        """kind: 429 | 418 | 5xx | timeout | garbage | empty; for ``count`` requests or ``duration_s``."""
        return self._post("/_sim/rest/fault", kind=kind, path=path, count=count, duration_s=duration_s,
                          retry_after=retry_after, status=status, hang_s=hang_s, body=body)

    def clear_rest_faults(self, path: str | None = None) -> dict[str, Any]:
        return self._post("/_sim/rest/clear", path=path)


def start_simulator_process(port: int = 0, extra_args: Sequence[str] = (), *, timeout: float = 15.0,
                            env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Spawn ``python -m collector.simulator`` and wait for its READY line.

    Returns (process, base URL ``http://127.0.0.1:PORT``). The simulator exits by itself when this
    process dies (``--parent-pid``). Stop it with ``stop_simulator_process``.
    """
    cmd = [sys.executable, "-m", "collector.simulator", "--port", str(port),
           "--parent-pid", str(os.getpid()), *extra_args]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    buf = b""
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"simulator did not print its READY line within {timeout} s")
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"simulator exited before READY (exit code {proc.wait(5)})")
            buf += chunk
            if len(buf) > 65536:
                raise RuntimeError("simulator printed too much before READY")
    except BaseException:
        _kill(proc)
        raise
    finally:
        sel.close()
    line = buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    if not line.startswith(READY_PREFIX):
        _kill(proc)
        raise RuntimeError(f"unexpected first line from simulator: {line[:200]!r}")
    return proc, line[len(READY_PREFIX):].strip()


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


def stop_simulator_process(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdout:
        proc.stdout.close()
    return proc.returncode
