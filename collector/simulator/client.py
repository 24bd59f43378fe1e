"""Synchronous control client for the simulator (standard library only) and a process launcher.

    proc, base_url = start_simulator_process()
    sim = SimulatorClient(base_url)
    sim.add_symbol("NEWUSDT", "NEW", "USDT")        # -> {"visible_at_ms": ..., ...}
    sim.set_trade_rate(50, "BTCUSDT")
    ws = sim.ws_url + "/stream?streams=btcusdt@trade"
    ...
    stop_simulator_process(proc)

Several exchanges from one process (each on its own port; instrument lists scripted in one vocabulary):

    proc, first_url, ports = start_simulator_process(exchanges=["okx", "bybit"])
    okx = SimulatorClient(ports["okx"])
    okx.add_listing("NEW", "USDT", status="pre_trading")   # -> state "preopen" on the wire
    okx.set_listing_status("NEW-USDT", "trading")          # -> "live"
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
from typing import Any, Iterable, Literal, Sequence, overload

READY_PREFIX = "SIMULATOR READY "
PORTS_PREFIX = "SIMULATOR PORTS "


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

    # ---------------------------------------------------------------- listings (every exchange's port)
    def add_listing(self, base: str, quote: str, status: str = "trading", market: str = "spot", *,
                    symbol: str | None = None, raw_status: str | None = None) -> dict[str, Any]:
        """Add ``base``/``quote`` in a normalized status (pre_trading | trading | halted); the answer has
        the exchange's native ``symbol``, its ``raw_status`` and ``visible_at_ms``.

        market: "spot" | "perp"; ``symbol`` overrides the native name; ``raw_status`` puts an
        exchange-specific value on the wire instead of the mapped one.
        """
        return self._post("/_sim/listings/add", base=base, quote=quote, status=status, market=market,
                          symbol=symbol, raw_status=raw_status)

    def set_listing_status(self, symbol: str, status: str | None = None, market: str = "spot", *,
                           raw_status: str | None = None) -> dict[str, Any]:
        """Move a symbol (native name or BASE-QUOTE) to a normalized status; "delisted" removes it on
        exchanges that drop delisted symbols."""
        return self._post("/_sim/listings/status", symbol=symbol, status=status, market=market,
                          raw_status=raw_status)

    def remove_listing(self, symbol: str, market: str = "spot") -> dict[str, Any]:
        return self._post("/_sim/listings/remove", symbol=symbol, market=market)

    def add_listing_filler(self, count: int, quote: str = "USDT", market: str = "spot") -> dict[str, Any]:
        """``count`` trading symbols SIM00001... so the list has a realistic size."""
        return self._post("/_sim/listings/filler", count=count, quote=quote, market=market)

    def listings(self, market: str | None = None) -> list[dict[str, Any]]:
        query = f"?market={market}" if market else ""
        return self._call("GET", "/_sim/listings" + query)["listings"]

    def status_map(self) -> dict[str, Any]:
        """This exchange's normalized -> raw status table (``{"map": {market: {status: raw}}}``)."""
        return self._call("GET", "/_sim/status-map")

    def ports(self) -> dict[str, str]:
        """exchange -> base URL of every exchange this simulator process serves."""
        return self._call("GET", "/_sim/ports")["ports"]

    # ---------------------------------------------------------------- market data (binance, okx, bybit, deribit)
    def md_stats(self) -> dict[str, Any]:
        """Frames sent per channel, updates generated, and per book ``seq`` (last generated) and
        ``sent_seq`` (last written to a subscriber), keyed ``market:symbol``."""
        return self._call("GET", "/_sim/md/stats")

    def md_trades(self) -> dict[str, Any]:
        """The trade tape per instrument (``market:symbol``): ``first_id`` and ``last_id`` generated
        (ids grow by one per trade; Binance USDⓈ-M and Bybit publish other ids), ``trades``."""
        return self._call("GET", "/_sim/md/trades")["instruments"]

    def md_config(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/md/config")["config"]

    def md_configure(self, **values: Any) -> dict[str, Any]:
        """e.g. ``md_configure(okx_checksum=True, heartbeat_interval=0.5, max_updates_per_s=2000)``."""
        return self._call("POST", "/_sim/md/config", values)["config"]

    def md_set_rate(self, rate: float, channel: str | None = None, symbol: str | None = None) -> dict[str, Any]:
        """Updates/s of every topic (no channel/symbol), or of one channel and/or symbol."""
        return self._post("/_sim/md/rate", rate=rate, channel=channel, symbol=symbol)

    def md_inject_gap(self, symbol: str, market: str | None = None, count: int = 1) -> dict[str, Any]:
        """The next book update of ``symbol`` skips ``count`` updates (generated, never sent)."""
        return self._post("/_sim/md/gap", symbol=symbol, market=market, count=count)

    def md_bad_checksum(self, symbol: str, market: str | None = None) -> dict[str, Any]:
        """OKX: the next book update of ``symbol`` carries a wrong checksum."""
        return self._post("/_sim/md/checksum", symbol=symbol, market=market)

    def md_silence(self, channel: str, symbol: str, market: str | None = None,
                   enabled: bool = True) -> dict[str, Any]:
        """Subscriptions of ``channel`` / ``symbol`` are acknowledged but get no data (until disabled).
        Channel names: binance depth, bookTicker, aggTrade, ticker, kline_1m, markPrice, forceOrder;
        okx books, trades, tickers, funding-rate, open-interest, candle1m, liquidation-orders (symbol =
        instType); bybit orderbook.50, publicTrade, tickers, allLiquidation; deribit book, trades,
        ticker, deribit_volatility_index (symbol btc_usd)."""
        return self._post("/_sim/md/silence", channel=channel, symbol=symbol, market=market, enabled=enabled)

    def md_drop_connections(self) -> dict[str, Any]:
        """Cut every market-data WebSocket connection of this port (no close frame)."""
        return self._post("/_sim/md/drop")

    def md_reset(self, drop_connections: bool = True) -> dict[str, Any]:
        return self._post("/_sim/md/reset", drop_connections=drop_connections)

    # ---------------------------------------------------------------- REST faults
    def rest_fault(self, kind: str, path: str = "*", count: int | None = None,
                   duration_s: float | None = None, retry_after: int = 60, status: int = 503,
                   hang_s: float = 30.0, body: str | None = None,
                   fraction: float | None = None) -> dict[str, Any]:
        """kind: 429 | 418 | 403 | 5xx | timeout | garbage | empty | truncate (drops the tail
        ``fraction`` of the list, default 0.5); for ``count`` requests or ``duration_s``."""
        return self._post("/_sim/rest/fault", kind=kind, path=path, count=count, duration_s=duration_s,
                          retry_after=retry_after, status=status, hang_s=hang_s, body=body, fraction=fraction)

    def clear_rest_faults(self, path: str | None = None) -> dict[str, Any]:
        return self._post("/_sim/rest/clear", path=path)


@overload
def start_simulator_process(port: int = 0, extra_args: Sequence[str] = (), *, timeout: float = 15.0,
                            env: dict[str, str] | None = None, exchanges: None = None,
                            base_port: int | None = None) -> tuple[subprocess.Popen, str]: ...


@overload
def start_simulator_process(port: int = 0, extra_args: Sequence[str] = (), *, timeout: float = 15.0,
                            env: dict[str, str] | None = None, exchanges: Sequence[str] | Literal["all"],
                            base_port: int | None = None) -> tuple[subprocess.Popen, str, dict[str, str]]: ...


def start_simulator_process(port: int = 0, extra_args: Sequence[str] = (), *, timeout: float = 15.0,
                            env: dict[str, str] | None = None, exchanges: Sequence[str] | str | None = None,
                            base_port: int | None = None) -> Any:
    """Spawn ``python -m collector.simulator`` and wait for its READY line.

    Returns (process, base URL ``http://127.0.0.1:PORT``) -- Binance only, as before -- or, with
    ``exchanges`` (a list of names or "all"), (process, URL of the first exchange, {exchange: URL}),
    each exchange on its own port (``base_port`` + i, or free ports when 0/None with ``port`` 0).
    The simulator exits by itself when this process dies (``--parent-pid``). Stop it with
    ``stop_simulator_process``.
    """
    cmd = [sys.executable, "-m", "collector.simulator", "--port", str(port),
           "--parent-pid", str(os.getpid())]
    if exchanges is not None:
        names = exchanges if isinstance(exchanges, str) else ",".join(exchanges)
        cmd += ["--exchanges", names]
        if base_port is not None:
            cmd += ["--base-port", str(base_port)]
    cmd += list(extra_args)
    want_lines = 1 if exchanges is None else 2
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    buf = b""
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while buf.count(b"\n") < want_lines:
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
    lines = [ln.decode("utf-8", "replace").strip() for ln in buf.split(b"\n")]
    line = lines[0]
    if not line.startswith(READY_PREFIX):
        _kill(proc)
        raise RuntimeError(f"unexpected first line from simulator: {line[:200]!r}")
    base_url = line[len(READY_PREFIX):].strip()
    if exchanges is None:
        return proc, base_url
    if not lines[1].startswith(PORTS_PREFIX):
        _kill(proc)
        raise RuntimeError(f"unexpected second line from simulator: {lines[1][:200]!r}")
    try:
        ports = json.loads(lines[1][len(PORTS_PREFIX):])
    except ValueError:
        _kill(proc)
        raise RuntimeError(f"unreadable ports line from simulator: {lines[1][:200]!r}") from None
    return proc, base_url, ports


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
