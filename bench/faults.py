"""Fault-injection suite (issue 5 point 6): the real collector under a sustained trade load, one
fault at a time, counting what the exchange sent against what reached Redis.

    python bench/faults.py [--long] [--case NAME ...] [--list]

Every case runs against a private redis-server on a free port, one simulator process (Binance +
OKX, shared by the cases) and ``collector run`` (tests/integration/harness.py) with market data
on: Binance spot trades (the simulator's ``@trade`` tape, ids 1, 2, 3 ...) and OKX spot trades
(``trades-all``, one tradeId per fill). The measure is the trade tape, because trades have ids:

- **events sent**: per symbol, every id of the exchange's tape from the first trade it delivered
  to this collector to the last one it generated (Binance: ``/_sim/stats`` delivered ranges and
  ``next_id``; OKX: ``/_sim/md/trades``). Trades made while the collector was disconnected are
  in the tape: the exchange made them, its REST history serves them, and the collector must fill
  them in.
- **in Redis**: trade entries in the ``md:trade:*`` streams (read incrementally, so ``MAXLEN``
  trimming of a long run does not hide anything); **lost** = sent ids not in Redis;
  **duplicated** = entries beyond the first of an id.
- **counted drops**: the ``drops`` the collector reports for its children in ``/status`` (summed
  over restarts); for spool-full, the publisher's spool drops.
- **recovery s**: from the end of the fault (for a kill: the kill) to the moment Redis holds every
  trade the exchange had made up to then (caught up) and a newer one on every stream (flowing
  again); "-" when that never happened. Spool-full: until trades flow again (its losses stay).

The REST-fault rows count listing events instead (polls are REST): a symbol listed on the
exchange during the fault must be announced once in ``events:raw`` after it.

``--long`` uses the issue's durations (Redis down 60 s, longer windows); the default is the short
version that tests/integration/test_faults.py runs. Each case is a function ``case_<name>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from collector.simulator.client import (  # noqa: E402
    SimulatorClient, SimulatorError, start_simulator_process, stop_simulator_process,
)
from tests.conftest import RedisServer  # noqa: E402
from tests.integration.harness import CollectorProcess  # noqa: E402
from tests.proxy import CutProxy  # noqa: E402

BINANCE_SYMBOLS = ("BTCUSDT", "ETHUSDT")
OKX_SYMBOLS = ("BTC-USDT", "ETH-USDT")
CANONICAL = {"BTCUSDT": "BTC-USDT", "ETHUSDT": "ETH-USDT"}
#: OKX trades per second per symbol (the simulator's market-data topics run at most 20/s)
OKX_RATE = 20.0
#: nothing filled in for this long while trades flow: what is missing stays missing
STUCK_S = 2.5


@dataclass(frozen=True)
class Profile:
    """Durations (s) and load of one run of the suite."""

    binance_rate: float        # trades/s per Binance symbol
    warmup: float              # load before the fault
    after: float               # load after recovery
    redis_down: float
    slow_for: float
    slow_latency: float        # added each way per chunk
    drops: int                 # WebSocket drops, ...
    drop_every: float          # ... this far apart
    stall: float               # connection / subscription silent this long
    rest_fault: float          # each REST fault lasts this long
    leak_for: float            # a leaking worker runs this long (recycled meanwhile)
    settle_timeout: float      # longest wait for Redis to catch up
    spool_down: float          # Redis outage of the spool-full case, ...
    spool_rate: float          # ... at this rate per Binance symbol (fills 1 MiB of spool)


SHORT = Profile(binance_rate=300, warmup=0.5, after=0.3, redis_down=10, slow_for=2, slow_latency=0.05,
                drops=3, drop_every=1.0, stall=2.5, rest_fault=1.0, leak_for=4, settle_timeout=20,
                spool_down=3, spool_rate=1000)
LONG = Profile(binance_rate=1500, warmup=5, after=5, redis_down=60, slow_for=30, slow_latency=0.1,
               drops=10, drop_every=3, stall=20, rest_fault=15, leak_for=60, settle_timeout=120,
               spool_down=60, spool_rate=1500)

BASE_ENV = {
    "COLLECTOR_PUBLISHER__HEARTBEAT_INTERVAL": "1",
    "COLLECTOR_SUPERVISOR__BACKOFF_INITIAL": "0.5",
    "COLLECTOR_SUPERVISOR__SAMPLE_INTERVAL": "0.5",
    "COLLECTOR_SUPERVISOR__STOP_TIMEOUT": "5",
    "COLLECTOR_SUPERVISOR__SHUTDOWN_TIMEOUT": "15",
}


def exchange_env(ports: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, symbols in (("binance", ["BTC-USDT", "ETH-USDT"]), ("okx", list(OKX_SYMBOLS))):
        p = f"COLLECTOR_EXCHANGES__{name.upper()}__"
        out.update({
            p + "ENABLED": "true", p + "LISTINGS": "false", p + "MARKET_DATA": "true",
            p + "SYMBOLS": json.dumps(symbols), p + "MARKETS": '["spot"]', p + "CHANNELS": '["trade"]',
            p + "REST_URL": ports[name], p + "WS_URL": ports[name].replace("http://", "ws://"),
            p + "RECONNECT_INITIAL": "0.5", p + "RECONNECT_MAX": "2",
        })
    return out


# ============================================================================ results
@dataclass
class Row:
    fault: str
    sent: int | None = None
    stored: int | None = None
    lost: int | None = None
    duplicated: int | None = None
    drops: int | None = None
    recovery_s: float | None = None
    notes: str = ""
    #: per stream: (sent, stored, lost, duplicated), for a failing test's message
    detail: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    #: per stream: the first missing id ranges (diagnostics)
    missing: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def cells(self) -> list[str]:
        def s(v: Any) -> str:
            return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))
        return [self.fault, s(self.sent), s(self.stored), s(self.lost), s(self.duplicated), s(self.drops),
                s(self.recovery_s), self.notes]


HEADER = ("fault", "events sent", "in Redis", "lost", "duplicated", "counted drops", "recovery s", "notes")


def table(rows: list[Row]) -> str:
    lines = ["Events are trades, counted by trade id on the exchange's tape (REST rows: listing events); "
             "recovery = fault end -> every trade made before it is in Redis and newer ones flow.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


# ============================================================================ measuring
class TapeReader:
    """What reached Redis, per trade stream: a Counter of trade ids, read incrementally (XRANGE
    from the last entry seen), tolerant of Redis being down. ``caught_up(hi)``: every id of the
    stream's sent range up to ``hi`` is there (ids in ``excluded`` are not expected)."""

    def __init__(self, redis_port: int, streams: list[str]) -> None:
        import redis

        self._client = redis.Redis(host="127.0.0.1", port=redis_port, decode_responses=True,
                                   socket_timeout=2, socket_connect_timeout=1)
        self.streams = streams
        self.cursor = {s: "-" for s in streams}
        self.ids: dict[str, Counter[int]] = {s: Counter() for s in streams}
        self.markers: dict[str, int] = {s: 0 for s in streams}
        self.lo: dict[str, int] = {}
        self.excluded: dict[str, set[int]] = {s: set() for s in streams}
        self._prefix: dict[str, int] = {}

    def poll(self) -> bool:
        import redis

        try:
            for s in self.streams:
                while True:
                    start = self.cursor[s] if self.cursor[s] == "-" else "(" + self.cursor[s]
                    batch = self._client.xrange(s, start, "+", count=10_000)
                    if not batch:
                        break
                    for entry_id, f in batch:
                        if f.get("type") == "trade":
                            self.ids[s][int(f["trade_id"])] += 1
                        else:
                            self.markers[s] += 1
                    self.cursor[s] = batch[-1][0]
            return True
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def forget(self) -> None:
        """Redis came back empty: what was read from the old one is gone."""
        for s in self.streams:
            self.cursor[s] = "-"
            self.ids[s].clear()
            self.markers[s] = 0
        self._prefix.clear()

    def set_lo(self, stream: str, lo: int) -> None:
        self.lo[stream] = lo
        self._prefix.pop(stream, None)

    def caught_up(self, hi: dict[str, int]) -> bool:
        for s, h in hi.items():
            lo = self.lo.get(s)
            if lo is None:
                return False
            p = self._prefix.get(s, lo - 1)
            ids, ex = self.ids[s], self.excluded[s]
            while p < h and (p + 1 in ids or p + 1 in ex):
                p += 1
            self._prefix[s] = p
            if p < h:
                return False
        return True

    def progress(self) -> int:
        """How far the caught-up prefixes got (changes while a hole is being filled)."""
        return sum(self._prefix.values())

    def resumed(self, hi: dict[str, int]) -> bool:
        """Every stream has a trade newer than ``hi`` (the flow is back)."""
        return all(self.ids[s] and max(self.ids[s]) > h for s, h in hi.items())


def _ranges(ids: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in ids:
        if out and out[-1][1] + 1 == i:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def binance_stream(symbol: str) -> str:
    return f"md:trade:binance:spot:{CANONICAL[symbol]}"


def okx_stream(symbol: str) -> str:
    return f"md:trade:okx:spot:{symbol}"


# ============================================================================ one case run
class Run:
    """One case: a fresh Redis, the collector, the load, the tape readers."""

    def __init__(self, rig: "FaultRig", name: str, redis_via_proxy: bool = False, rate: float | None = None,
                 **env: str) -> None:
        self.rig, self.name, self.p = rig, name, rig.profile
        self.rate = rate or self.p.binance_rate
        self.dir = rig.workdir / name
        self.redis = RedisServer(self.dir / "redis").start()
        self.proxy: CutProxy | None = CutProxy(self.redis.port) if redis_via_proxy else None
        url = f"redis://127.0.0.1:{self.proxy.port}/0" if self.proxy else self.redis.url
        self.env = {**BASE_ENV, **exchange_env(rig.ports), **env}
        self.collector = CollectorProcess(self.dir / "run", url, **self.env)
        self.streams = [binance_stream(s) for s in BINANCE_SYMBOLS] + [okx_stream(s) for s in OKX_SYMBOLS]
        self.tape = TapeReader(self.redis.port, self.streams)
        self.base: dict[str, int] = {}
        self.drops_before = 0   # drops counted by collector incarnations that are gone
        self.fault_end: float | None = None
        self.hi_at_end: dict[str, int] = {}
        self.recovery_s: float | None = None

    # ---- the exchange side
    def generated_hi(self) -> dict[str, int]:
        """The last id each stream's exchange tape has generated now."""
        st = self.rig.binance.stats()["symbols"]
        out = {binance_stream(s): st[s]["next_id"] - 1 for s in BINANCE_SYMBOLS}
        okx = self.rig.okx.md_trades()
        for s in OKX_SYMBOLS:
            t = okx.get(f"spot:{s}")
            out[okx_stream(s)] = t["last_id"] if t else 0
        return out

    def sent_ranges(self) -> dict[str, tuple[int, int]]:
        """Per stream: (first id delivered to this collector, last id generated)."""
        out: dict[str, tuple[int, int]] = {}
        st = self.rig.binance.stats()["symbols"]
        for s in BINANCE_SYMBOLS:
            firsts = [a if a >= self.base[s] else self.base[s] for a, b in st[s]["delivered_ranges"]
                      if b >= self.base[s]]
            hi = st[s]["next_id"] - 1
            if not firsts and st[s]["ranges_truncated"]:
                # the simulator stopped tracking ranges (1M ids per symbol): the collector was
                # subscribed before this case's load started, so its first trade is the base
                firsts = [self.base[s]]
            out[binance_stream(s)] = (min(firsts) if firsts else hi + 1, hi)
        okx = self.rig.okx.md_trades()
        for s in OKX_SYMBOLS:
            t = okx.get(f"spot:{s}")
            out[okx_stream(s)] = (t["first_id"], t["last_id"]) if t and t["trades"] else (1, 0)
        return out

    # ---- lifecycle
    def start(self) -> "Run":
        b, o = self.rig.binance, self.rig.okx
        b.set_trade_rate(0)
        o.md_reset()   # a fresh OKX tape: its first trade is the first one this collector reads
        o.md_configure(trade_history=100_000)
        b.md_configure(trade_history=100_000)
        o.md_set_rate(OKX_RATE, channel="trades-all")
        st = b.stats()["symbols"]
        self.base = {s: st[s]["next_id"] for s in BINANCE_SYMBOLS}
        self.collector.start(timeout=60)
        self.wait(lambda: all(self.tape.ids[okx_stream(s)] for s in OKX_SYMBOLS), 30, "OKX trades flowing")
        self.wait(lambda: self.collector.child("binance").get("connection") == "connected", 30, "Binance connected")
        for s in BINANCE_SYMBOLS:
            b.set_trade_rate(self.rate, s)
        self.wait(lambda: all(self.tape.ids[binance_stream(s)] for s in BINANCE_SYMBOLS), 30,
                  "Binance trades flowing")
        for stream, (lo, _hi) in self.sent_ranges().items():
            self.tape.set_lo(stream, lo)
        time.sleep(self.p.warmup)
        return self

    def wait(self, pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.tape.poll()
            v = pred()
            if v:
                return v
            if time.monotonic() >= deadline:
                raise FaultCaseError(f"{self.name}: timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def children_drops(self) -> int:
        st = self.collector.status_or_none()
        if not st:
            return 0
        return sum(int(c.get("drops") or 0) for c in st["children"].values())

    def end_fault(self, at: float | None = None, hi: dict[str, int] | None = None, expect_loss: bool = False) -> None:
        """The fault is over now (or ``at``, when the tape's end was ``hi``): time the catch-up
        (``expect_loss``: only until newer trades flow again)."""
        self.fault_end = time.monotonic() if at is None else at
        self.hi_at_end = self.generated_hi() if hi is None else hi
        deadline = time.monotonic() + self.p.settle_timeout
        prefix, still_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            self.tape.poll()
            caught_up, resumed = self.tape.caught_up(self.hi_at_end), self.tape.resumed(self.hi_at_end)
            if resumed and (caught_up or expect_loss):
                self.recovery_s = time.monotonic() - self.fault_end
                break
            now = time.monotonic()
            if self.tape.progress() != prefix:
                prefix, still_since = self.tape.progress(), now
            elif resumed and now - still_since > STUCK_S:
                break   # new trades flow, the hole stays: lost (recovery "-")
            time.sleep(0.05)

    def finish(self, notes: str = "") -> Row:
        """Keep the load on, cut the tape at the last trade made now, wait until Redis holds it all
        (or nothing more gets filled in), then stop the load and count. The load stays on while
        waiting: a gap is filled when the next live trade shows it, as with a real exchange."""
        if self.fault_end is None:
            self.end_fault()
        time.sleep(self.p.after)
        sent = self.sent_ranges()
        hi = {s: h for s, (_lo, h) in sent.items()}
        deadline = time.monotonic() + self.p.settle_timeout
        prefix, still_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            self.tape.poll()
            if self.tape.caught_up(hi):
                break
            now = time.monotonic()
            if self.tape.progress() != prefix:
                prefix, still_since = self.tape.progress(), now
            elif self.tape.resumed(hi) and now - still_since > STUCK_S:
                break   # newer trades flow, the hole stays: what is missing is lost
            time.sleep(0.1)
        time.sleep(0.3)   # a late duplicate would show up now
        self.tape.poll()
        self.rig.binance.set_trade_rate(0)
        self.rig.okx.md_set_rate(0, channel="trades-all")
        drops = self.drops_before + self.children_drops()
        return self.count(sent, drops, notes)

    def count(self, sent: dict[str, tuple[int, int]], drops: int, notes: str) -> Row:
        """The row for the tape cut ``sent`` (per stream: first, last id). Entries above the cut
        are not counted (they arrived after it), except as duplicates."""
        row = Row(self.name, sent=0, stored=0, lost=0, duplicated=0, drops=drops, recovery_s=self.recovery_s)
        markers = overlap = 0
        for s, (lo, hi) in sent.items():
            ids, ex = self.tape.ids[s], self.tape.excluded[s]
            want = [i for i in range(lo, hi + 1) if i not in ex]
            stored = sum(c for i, c in ids.items() if lo <= i <= hi and i not in ex)
            overlap += sum(1 for i in ids if i in ex)
            lost = sum(1 for i in want if i not in ids)
            dup = sum(c - 1 for c in ids.values() if c > 1)
            row.sent += len(want)   # type: ignore[operator]
            row.stored += stored    # type: ignore[operator]
            row.lost += lost        # type: ignore[operator]
            row.duplicated += dup   # type: ignore[operator]
            row.detail[s] = (len(want), stored, lost, dup)
            if lost:
                row.missing[s] = _ranges([i for i in want if i not in ids])[:5]
            markers += self.tape.markers[s]
        extra = [notes] if notes else []
        if overlap:
            extra.append(f"{overlap} re-sent entries the old Redis had applied (not counted)")
        if markers:
            extra.append(f"{markers} trade_gap markers")
        row.notes = "; ".join(extra)
        return row

    def close(self) -> None:
        try:
            self.rig.binance.set_trade_rate(0)
        except SimulatorError:
            pass
        self.collector.kill_tree()
        if self.proxy is not None:
            self.proxy.close()
        if self.redis.proc is not None:
            try:
                self.redis.thaw()
            except Exception:  # noqa: BLE001
                pass
        self.redis.kill()

    def output_tail(self) -> str:
        out = [self.collector.output()[-3000:]]
        for name in ("publisher", "binance", "okx"):
            path = self.collector.log_file(name)
            if path.exists():
                out.append(f"==> {path} <==\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(out)


class FaultCaseError(RuntimeError):
    """A case could not run to the end (the collector never came up, ...)."""


# ============================================================================ the cases
def _kill_child(run: Run, name: str) -> None:
    c = run.collector
    old = c.child(name)["pid"]
    run.drops_before += run.children_drops()   # the killed child's counters die with it
    os.kill(old, signal.SIGKILL)
    run.end_fault()   # an instant fault: the catch-up includes the restart
    run.wait(lambda: (ch := c.child(name))["state"] == "RUNNING" and ch["pid"] != old, 30, f"{name} restarted")


def case_kill_binance_worker(rig: "FaultRig") -> list[Row]:
    """kill -9 of the Binance worker at load; the parent restarts it."""
    with rig.run("kill -9 binance worker") as run:
        _kill_child(run, "binance")
        return [run.finish()]


def case_kill_okx_worker(rig: "FaultRig") -> list[Row]:
    """kill -9 of the OKX worker (market data, trades-all)."""
    with rig.run("kill -9 okx worker") as run:
        _kill_child(run, "okx")
        return [run.finish()]


def case_kill_publisher(rig: "FaultRig") -> list[Row]:
    """kill -9 of the publisher at load; the workers re-send what it had not confirmed."""
    with rig.run("kill -9 publisher") as run:
        _kill_child(run, "publisher")
        return [run.finish()]


def case_kill_parent(rig: "FaultRig") -> list[Row]:
    """kill -9 of `collector run` itself; its children exit with it, and the harness starts it
    again at once, as systemd's Restart=always / supervisord's autorestart would."""
    with rig.run("kill -9 parent (restarted)") as run:
        c = run.collector
        assert c.proc is not None
        st = c.status()
        pids = [ch["pid"] for ch in st["children"].values() if ch["pid"]]
        run.drops_before += run.children_drops()
        hi = run.generated_hi()
        os.kill(c.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        c.proc.wait(10)
        run.wait(lambda: not any(_alive(p) for p in pids), 15, "children gone with their parent")
        c.start(timeout=60)   # Restart=always
        run.end_fault(at=killed_at, hi=hi)   # recovery counts from the kill
        return [run.finish()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def case_redis_down_keep_data(rig: "FaultRig") -> list[Row]:
    """Redis SIGKILLed, down for the profile's outage, restarted with its data (AOF)."""
    with rig.run(f"Redis killed, down {rig.profile.redis_down:g} s, restarted with its data") as run:
        run.redis.kill()
        time.sleep(run.p.redis_down)
        run.redis.start(keep_data=True)
        run.end_fault()
        return [run.finish()]


def case_redis_down_empty(rig: "FaultRig") -> list[Row]:
    """Redis SIGKILLed and replaced by an empty one. Entries the old Redis held are gone by
    definition: they are read from its files (AOF, fsync always: what it acknowledged) and not
    counted; every other trade, those the collector held and those sent after, must arrive."""
    with rig.run(f"Redis killed, down {rig.profile.redis_down:g} s, restarted EMPTY") as run:
        run.redis.kill()
        old_dir = run.dir / "redis-old"
        shutil.copytree(run.redis.workdir, old_dir)
        old = RedisServer(old_dir).start()
        try:
            gone = TapeReader(old.port, run.streams)
            gone.poll()
        finally:
            old.kill()
        n_gone = 0
        for s in run.streams:
            run.tape.excluded[s] = set(gone.ids[s])
            n_gone += len(gone.ids[s])
        run.tape.forget()
        time.sleep(max(0.0, run.p.redis_down - 1.0))
        run.redis.start(keep_data=False)
        run.end_fault()
        return [run.finish(notes=f"{n_gone} entries of the old Redis gone with it (not counted)")]


def case_redis_slow(rig: "FaultRig") -> list[Row]:
    """Redis behind a TCP proxy adding latency to every chunk each way, for a while."""
    p = rig.profile
    with rig.run(f"Redis slow (+{p.slow_latency * 1000:g} ms each way, {p.slow_for:g} s)", redis_via_proxy=True) as run:
        assert run.proxy is not None
        run.proxy.set_mode("delay", p.slow_latency)
        time.sleep(p.slow_for)
        run.proxy.set_mode("pass")
        run.end_fault()
        return [run.finish()]


def case_ws_drops(rig: "FaultRig") -> list[Row]:
    """The exchanges cut every WebSocket connection, again and again."""
    p = rig.profile
    with rig.run(f"all WS connections dropped {p.drops}x, every {p.drop_every:g} s") as run:
        for i in range(p.drops):
            rig.binance.drop_connections()
            rig.okx.md_drop_connections()
            if i < p.drops - 1:
                time.sleep(p.drop_every)
        run.end_fault()
        return [run.finish()]


def case_ws_stall(rig: "FaultRig") -> list[Row]:
    """Binance keeps its connections open but sends nothing (no trades, no pings)."""
    p = rig.profile
    with rig.run(f"Binance connection stalled silently {p.stall:g} s",
                 COLLECTOR_EXCHANGES__BINANCE__STALE_TIMEOUT="1.5") as run:
        rig.binance.stall(p.stall)
        time.sleep(p.stall)
        rig.binance.unstall()
        run.end_fault()
        return [run.finish()]


def case_subscription_silent(rig: "FaultRig") -> list[Row]:
    """One OKX subscription (trades-all BTC-USDT) acknowledged, then silent; the others flow."""
    p = rig.profile
    with rig.run(f"OKX trades-all BTC-USDT silent {p.stall:g} s",
                 COLLECTOR_EXCHANGES__OKX__STREAM_STALE_TIMEOUT="1.5",
                 COLLECTOR_EXCHANGES__OKX__SUBSCRIBE_TIMEOUT="1.5") as run:
        rig.okx.md_silence("trades-all", "BTC-USDT")
        time.sleep(p.stall)
        rig.okx.md_silence("trades-all", "BTC-USDT", enabled=False)
        run.end_fault()
        return [run.finish()]


def case_malformed_frames(rig: "FaultRig") -> list[Row]:
    """Garbage, truncated, binary and oversized (2 MB) frames between Binance's trade frames."""
    with rig.run("garbage + truncated + binary + oversized frames") as run:
        for _ in range(3):
            rig.binance.send_malformed(count=2, size=2 * 1024 * 1024)
            time.sleep(0.5)
        run.end_fault()
        return [run.finish()]


def case_memory_leak(rig: "FaultRig") -> list[Row]:
    """The Binance worker leaks memory; the parent recycles it at max_rss_mb, again and again."""
    p = rig.profile
    with rig.run(f"binance worker leaking memory ({p.leak_for:g} s)",
                 COLLECTOR_TESTING__LEAK_EXCHANGE="binance", COLLECTOR_TESTING__LEAK_MB_PER_S="60",
                 COLLECTOR_SUPERVISOR__MAX_RSS_MB="150", COLLECTOR_SUPERVISOR__OVER_LIMIT_SAMPLES="2") as run:
        return [_leak_window(run, "binance", p.leak_for)]


def case_fd_leak(rig: "FaultRig") -> list[Row]:
    """The OKX worker leaks file descriptors; recycled at max_fds."""
    p = rig.profile
    with rig.run(f"okx worker leaking FDs ({p.leak_for:g} s)",
                 COLLECTOR_TESTING__FD_LEAK_EXCHANGE="okx", COLLECTOR_TESTING__FD_LEAK_PER_S="100",
                 COLLECTOR_SUPERVISOR__MAX_FDS="200", COLLECTOR_SUPERVISOR__OVER_LIMIT_SAMPLES="2") as run:
        return [_leak_window(run, "okx", p.leak_for)]


def _leak_window(run: Run, name: str, seconds: float) -> Row:
    c = run.collector
    deadline = time.monotonic() + seconds
    recycles, pid = 0, c.child(name)["pid"]
    while time.monotonic() < deadline:
        run.tape.poll()
        st = c.status_or_none()
        if st:
            ch = st["children"][name]
            if ch["pid"] and ch["pid"] != pid:
                pid = ch["pid"]
            recycles = max(recycles, int(ch.get("recycles") or 0))
        time.sleep(0.2)
    run.end_fault()   # the leak goes on: this is the end of the measured window
    row = run.finish()
    st = c.status_or_none()
    if st:
        recycles = max(recycles, int(st["children"][name].get("recycles") or 0))
        crashes = int(st["children"][name].get("restarts") or 0)
        row.notes = "; ".join(x for x in (f"{recycles} recycles, {crashes} crashes", row.notes) if x)
    if recycles == 0:
        row.notes = "NOT RECYCLED; " + row.notes
    return row


def case_hung_worker(rig: "FaultRig") -> list[Row]:
    """The Binance worker's event loop blocks (testing.hang_exchange): found by its missing
    heartbeat, dumped, killed, restarted."""
    with rig.run("hung binance worker (blocked event loop)",
                 COLLECTOR_TESTING__HANG_EXCHANGE="binance",
                 COLLECTOR_TESTING__HANG_AFTER_S=f"{rig.profile.warmup + 1:g}",   # after the warm-up
                 COLLECTOR_SUPERVISOR__BEAT_TIMEOUT="2", COLLECTOR_SUPERVISOR__HUNG_DUMP_GRACE="0.5") as run:
        c = run.collector
        run.wait(lambda: (ch := c.child("binance"))["hung_kills"] >= 1 and ch["state"] == "RUNNING",
                 30, "the hung worker killed and replaced")
        run.end_fault()
        row = run.finish()
        row.notes = "; ".join(x for x in (f"hung_kills {c.child('binance')['hung_kills']}", row.notes) if x)
        return [row]


REST_KINDS = ("429", "418", "5xx", "timeout")


def case_rest_faults(rig: "FaultRig") -> list[Row]:
    """Binance's instruments endpoint answers 429 / 418 / 5xx / hangs for a while; a symbol listed
    meanwhile must be announced once after it. One row per kind."""
    p = rig.profile
    rows: list[Row] = []
    with rig.run("REST faults", COLLECTOR_EXCHANGES__BINANCE__LISTINGS="true",
                 COLLECTOR_EXCHANGES__BINANCE__LISTING_PUSH="false",
                 COLLECTOR_EXCHANGES__BINANCE__POLL_INTERVAL="0.5",
                 COLLECTOR_EXCHANGES__BINANCE__REST_TIMEOUT="1",
                 COLLECTOR_EXCHANGES__BINANCE__BREAKER_RECOVERY="2") as run:
        r = run.redis.client()
        run.wait(lambda: r.exists("known:pairs:binance"), 30, "the first instruments snapshot")
        path = "/api/v3/exchangeInfo"
        for kind in REST_KINDS:
            base = rig.next_symbol_base()
            drops0 = run.children_drops()
            hit0 = _faulted(rig.binance, path)
            rig.binance.rest_fault(kind, path=path, duration_s=p.rest_fault, retry_after=int(max(1, p.rest_fault)),
                                   status=503, hang_s=p.rest_fault + 5)
            time.sleep(min(0.5, p.rest_fault / 4))
            rig.binance.add_symbol(f"{base}USDT", base, "USDT")
            time.sleep(p.rest_fault)
            rig.binance.clear_rest_faults()
            end = time.monotonic()
            pair = f"{base}-USDT"

            def events() -> list[dict[str, str]]:
                return [f for _i, f in r.xrange("events:raw") if f.get("pair") == pair and f.get("event") == "listing"]

            recovery: float | None = None
            deadline = end + p.settle_timeout
            while time.monotonic() < deadline:
                if events():
                    recovery = time.monotonic() - end
                    break
                time.sleep(0.05)
            time.sleep(0.7)   # a second announcement would show up now (another poll)
            got = len(events())
            rows.append(Row(f"REST {kind} on the instruments poll, {p.rest_fault:g} s", sent=1, stored=got,
                            lost=0 if got else 1, duplicated=max(0, got - 1),
                            drops=run.children_drops() - drops0, recovery_s=recovery,
                            notes=f"events = listing events; {_faulted(rig.binance, path) - hit0} "
                                  "requests answered with the fault"))
        return rows


def _faulted(sim: SimulatorClient, path: str) -> int:
    return int(sim.stats()["rest"]["faulted"].get(path, 0))


def case_spool_full(rig: "FaultRig") -> list[Row]:
    """Redis down longer than the in-memory buffer and a 1 MiB disk spool last: the overflow is
    dropped and counted (the publisher's spool drops), and exactly that is missing."""
    p = rig.profile
    with rig.run(f"disk spool full (Redis down {p.spool_down:g} s, 1 MiB spool)", rate=p.spool_rate,
                 COLLECTOR_PUBLISHER__BUFFER_MAX_EVENTS="100",
                 COLLECTOR_PUBLISHER__SPOOL_MAX_BYTES=str(1024 ** 2),
                 COLLECTOR_PUBLISHER__SPOOL_SEGMENT_BYTES=str(128 * 1024)) as run:
        run.redis.kill()
        time.sleep(p.spool_down)
        run.redis.start(keep_data=True)
        run.end_fault(expect_loss=True)
        row = run.finish()
        spool = (run.collector.status().get("publisher") or {}).get("spool") or {}
        spool_drops = int(spool.get("events_dropped") or 0)
        row.notes = "; ".join(x for x in (f"spool drops {spool_drops} (children drops {row.drops})", row.notes) if x)
        row.drops = spool_drops + run.drops_before
        return [row]


CASES: dict[str, Callable[["FaultRig"], list[Row]]] = {
    "kill_binance_worker": case_kill_binance_worker,
    "kill_okx_worker": case_kill_okx_worker,
    "kill_publisher": case_kill_publisher,
    "kill_parent": case_kill_parent,
    "redis_down_keep_data": case_redis_down_keep_data,
    "redis_down_empty": case_redis_down_empty,
    "redis_slow": case_redis_slow,
    "ws_drops": case_ws_drops,
    "ws_stall": case_ws_stall,
    "subscription_silent": case_subscription_silent,
    "malformed_frames": case_malformed_frames,
    "rest_faults": case_rest_faults,
    "memory_leak": case_memory_leak,
    "fd_leak": case_fd_leak,
    "hung_worker": case_hung_worker,
    "spool_full": case_spool_full,
}


# ============================================================================ the rig
class FaultRig:
    """One simulator process (Binance + OKX) shared by the cases; a work directory."""

    def __init__(self, profile: Profile = SHORT, workdir: Path | None = None) -> None:
        self.profile = profile
        self._own_dir = workdir is None
        # short path: the control socket lives in the run dir (Unix socket paths are short)
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="flt-", dir="/tmp"))
        self._symbol_no = 0
        self.runs = 0
        self.proc, _first, self.ports = start_simulator_process(
            exchanges=["binance", "okx"], extra_args=["--md-rate", "20", "--seed", "11", "--ping-interval", "5"])
        self.binance = SimulatorClient(self.ports["binance"])
        self.okx = SimulatorClient(self.ports["okx"])

    def next_symbol_base(self) -> str:
        self._symbol_no += 1
        return f"FLT{self._symbol_no}X"

    def run(self, name: str, redis_via_proxy: bool = False, rate: float | None = None, **env: str) -> "_RunContext":
        return _RunContext(self, name, redis_via_proxy, rate, env)

    def close(self) -> None:
        stop_simulator_process(self.proc)
        if self._own_dir and not os.environ.get("FAULTS_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "FaultRig":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RunContext:
    def __init__(self, rig: FaultRig, name: str, redis_via_proxy: bool, rate: float | None,
                 env: dict[str, str]) -> None:
        self.rig, self.name, self.redis_via_proxy, self.rate, self.env = rig, name, redis_via_proxy, rate, env
        self.run: Run | None = None

    def __enter__(self) -> Run:
        self.rig.runs += 1   # a directory of its own per run: a case may run twice
        slug = f"{self.rig.runs:02d}-" + "".join(ch if ch.isalnum() else "-" for ch in self.name.lower())[:40]
        self.run = Run(self.rig, slug, self.redis_via_proxy, self.rate, **self.env)
        self.run.name = self.name
        try:
            return self.run.start()
        except BaseException:
            self._fail()
            raise

    def _fail(self) -> None:
        assert self.run is not None
        if os.environ.get("FAULTS_VERBOSE"):
            print(self.run.output_tail(), file=sys.stderr)
        self.run.close()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._fail()
        else:
            assert self.run is not None
            self.run.close()


def run_cases(names: list[str], profile: Profile = SHORT) -> Iterator[Row]:
    with FaultRig(profile) as rig:
        for name in names:
            try:
                yield from CASES[name](rig)
            except (FaultCaseError, AssertionError) as exc:
                yield Row(name, notes=f"ERROR: {exc}"[:300])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--long", action="store_true", help="the issue's durations (Redis down 60 s, ...)")
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="run only this case (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the cases")
    args = ap.parse_args(argv)
    if args.list:
        for name, fn in CASES.items():
            print(f"{name:24} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    profile = LONG if args.long else SHORT
    rows: list[Row] = []
    t0 = time.monotonic()
    for row in run_cases(args.case or list(CASES), profile):
        rows.append(row)
        print(f"[{time.monotonic() - t0:5.0f} s] " + " | ".join(row.cells()), file=sys.stderr, flush=True)
        for stream, (sent, stored, lost, dup) in row.detail.items():
            print(f"    {stream}: sent {sent} stored {stored} lost {lost} duplicated {dup}"
                  + (f" missing {row.missing[stream]}" if stream in row.missing else ""), file=sys.stderr)
    print(f"\n{'long' if args.long else 'short'} profile, {time.monotonic() - t0:.0f} s\n")
    print(table(rows))
    bad = [r for r in rows if (r.lost is None or r.duplicated is None
                                                 or (r.lost and "spool" not in r.fault) or r.duplicated)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
