"""Market-data soak benchmark: memory, FDs, connections, CPU and Redis throughput of the real collector.

Real processes: a private redis-server on a free port, the simulator (``--exchanges all,deribit``),
and ``collector run`` with market data on for Binance (spot + USDⓈ-M), OKX (spot + swap), Bybit
(spot + linear) and Deribit, every data type each exchange supports subscribed (``channels``
unset), ``--symbols`` symbols per exchange (BTC and ETH plus simulator filler symbols SIM00001...,
listed on both markets before the collector starts). Listing detection is off so only market data
is measured.

Every ``--interval`` seconds (default 10) it samples per collector process (parent, publisher,
each worker; psutil): RSS, open FDs, TCP connections (to the simulator / to Redis / other), CPU%
since the previous sample; and per Redis stream the number of entries ever added (XINFO STREAM
``entries-added``, so MAXLEN trimming does not hide throughput), summed per type and per exchange.

Printed at the end: per process RSS at the end of the warm-up and at the end, growth %, max RSS
after the warm-up, max FDs, max TCP connections and (workers) the WebSocket connections expected
from the sharding of their feeds; CPU per process; events/s per type and per exchange into Redis
over the measured window (after the warm-up), and the totals. ``--out`` writes every sample and
the summary as JSON.

    python bench/bench_md.py [--duration 600] [--warmup 120] [--symbols 50] [--md-rate 1]
                             [--interval 10] [--book-mode both] [--out bench-md.json]

The issue's target: flat worker RSS (growth under 5 % after the warm-up), bounded FDs and
connections. Run it on an idle machine: the simulator shares the CPUs with the collector. The
publisher's RSS grows until its dedup window (``publisher.dedup_window``, 300 s) is full (keys =
events/s x window, capped by ``dedup_max_keys``): judge its flatness only after that.
TCP counts are WebSocket plus REST keep-alive connections (snapshots and polls).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import redis  # noqa: E402

from bench._common import free_port, start_redis  # noqa: E402
from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process  # noqa: E402
from shared.settings import ExchangeSettings  # noqa: E402
from workers.exchanges import get_adapter  # noqa: E402

EXCHANGES = ("binance", "okx", "bybit", "deribit")
#: exchanges whose simulated instrument lists get filler symbols (Deribit accepts any valid name)
LISTED = ("binance", "okx", "bybit")
#: native spelling of a symbol per (exchange, market), to check the simulator lists it
NATIVE = {
    ("binance", "spot"): lambda b, q: f"{b}{q}", ("binance", "perp"): lambda b, q: f"{b}{q}",
    ("okx", "spot"): lambda b, q: f"{b}-{q}", ("okx", "perp"): lambda b, q: f"{b}-{q}-SWAP",
    ("bybit", "spot"): lambda b, q: f"{b}{q}", ("bybit", "perp"): lambda b, q: f"{b}{q}",
}


def symbols_for(exchange: str, n: int) -> list[str]:
    quote = "USD" if exchange == "deribit" else "USDT"   # Deribit: inverse perpetuals (BTC-PERPETUAL ...)
    return ([f"BTC-{quote}", f"ETH-{quote}"] + [f"SIM{i:05d}-{quote}" for i in range(1, n - 1)])[:n]


def md_settings(exchange: str, args: argparse.Namespace) -> dict[str, Any]:
    """The market-data settings of one exchange (env and expected-connection computation share them)."""
    return {"enabled": True, "listings": False, "market_data": True, "symbols": symbols_for(exchange, args.symbols),
            "book_mode": args.book_mode}


def collector_env(run: Path, redis_url: str, http_port: int, ports: dict[str, str],
                  args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env.update({"COLLECTOR_NODE_ID": "BENCH", "COLLECTOR_RUN_DIR": str(run), "COLLECTOR_LOG_DIR": str(run / "logs"),
                "COLLECTOR_REDIS__URL": redis_url, "COLLECTOR_HTTP__PORT": str(http_port),
                "PYTHONUNBUFFERED": "1"})
    for name in EXCHANGES:
        p = f"COLLECTOR_EXCHANGES__{name.upper()}__"
        for key, value in md_settings(name, args).items():
            # lists as JSON (pydantic-settings), booleans as true/false
            env[p + key.upper()] = json.dumps(value) if isinstance(value, (list, bool)) else str(value)
        env[p + "REST_URL"] = ports[name]
        env[p + "WS_URL"] = ports[name].replace("http://", "ws://")
    return env


def expected_connections(exchange: str, args: argparse.Namespace) -> tuple[int, int]:
    """(WebSocket connections, streams) the worker's feeds shard into, as WsManager.start does."""
    cfg = ExchangeSettings(**md_settings(exchange, args))
    conns = streams = 0
    for feed, names in get_adapter(exchange, cfg.symbols).market_data_feeds(cfg):
        unique = len(dict.fromkeys(names))
        per = max(1, min(feed.max_streams_per_connection, cfg.max_streams_per_connection))
        conns += math.ceil(unique / per)
        streams += unique
    return conns, streams


def list_symbols(sims: dict[str, SimulatorClient], n: int) -> None:
    """Filler symbols on both markets of the listed venues, and BTC/ETH where a list lacks them."""
    for name in LISTED:
        for market in ("spot", "perp"):
            natives = {row["symbol"] for row in sims[name].listings(market)}
            for base in ("BTC", "ETH"):
                if NATIVE[(name, market)](base, "USDT") not in natives:
                    sims[name].add_listing(base, "USDT", status="trading", market=market)
            if n > 2:
                sims[name].add_listing_filler(n - 2, "USDT", market=market)
            natives = {row["symbol"] for row in sims[name].listings(market)}
            missing = [s for s in symbols_for(name, n) if NATIVE[(name, market)](*s.split("-")) not in natives]
            if missing:
                raise SystemExit(f"simulator {name} {market} does not list {missing[:5]}")


def status(http_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=5) as resp:
        return json.loads(resp.read())


class Sampler:
    """Per-process and Redis samples; CPU% is over the time since the previous sample."""

    def __init__(self, collector_pid: int, http_port: int, r: redis.Redis, sim_ports: set[int],
                 redis_port: int) -> None:
        self.collector_pid, self.http_port, self.r = collector_pid, http_port, r
        self.sim_ports, self.redis_port = sim_ports, redis_port
        self.procs: dict[int, psutil.Process] = {}
        self.last_cpu: dict[str, tuple[int, float, float]] = {}   # name -> (pid, cpu seconds, at)
        self.streams: set[str] = set()

    def _proc(self, pid: int) -> psutil.Process:
        if pid not in self.procs:
            self.procs[pid] = psutil.Process(pid)
        return self.procs[pid]

    def children(self) -> dict[str, dict[str, Any]]:
        st = status(self.http_port)
        out = {"collector": {"pid": self.collector_pid, "state": "RUNNING", "restarts": 0}}
        for name, c in st.get("children", {}).items():
            out[name] = {"pid": c.get("pid"), "state": c.get("state"), "restarts": c.get("total_restarts", 0)}
        return out

    def sample(self, t: float) -> dict[str, Any]:
        procs: dict[str, Any] = {}
        for name, info in self.children().items():
            pid = info["pid"]
            if not pid:
                procs[name] = {**info}
                continue
            try:
                p = self._proc(pid)
                with p.oneshot():
                    cpu = p.cpu_times()
                    rss = p.memory_info().rss
                    fds = p.num_fds()
                    conns = p.net_connections(kind="tcp")
            except psutil.Error:
                procs[name] = {**info, "gone": True}
                continue
            now = time.monotonic()
            cpu_s = cpu.user + cpu.system
            prev = self.last_cpu.get(name)
            cpu_pct = (100.0 * (cpu_s - prev[1]) / max(now - prev[2], 1e-9)
                       if prev is not None and prev[0] == pid else None)
            self.last_cpu[name] = (pid, cpu_s, now)
            remote = [c.raddr.port for c in conns if c.raddr]
            procs[name] = {**info, "rss": rss, "fds": fds, "tcp": len(conns),
                           "tcp_sim": sum(1 for port in remote if port in self.sim_ports),
                           "tcp_redis": sum(1 for port in remote if port == self.redis_port),
                           "cpu_s": cpu_s, "cpu_pct": cpu_pct}
        return {"t": round(t, 2), "procs": procs, "redis": self.redis_counts()}

    def redis_counts(self) -> dict[str, Any]:
        self.streams.update(self.r.scan_iter(match="md:*", count=2000))
        keys = sorted(self.streams)
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.xinfo_stream(key)
        by_type: dict[str, int] = {}
        by_exchange: dict[str, int] = {}
        length = 0
        for key, info in zip(keys, pipe.execute(raise_on_error=False)):
            if not isinstance(info, dict):
                continue
            _md, kind, exchange, _market, _symbol = key.split(":", 4)
            added = int(info.get("entries-added", info.get("length", 0)))
            by_type[kind] = by_type.get(kind, 0) + added
            by_exchange[exchange] = by_exchange.get(exchange, 0) + added
            length += int(info.get("length", 0))
        mem = self.r.info("memory")
        return {"streams": len(keys), "by_type": by_type, "by_exchange": by_exchange, "entries_kept": length,
                "used_memory": mem.get("used_memory", 0)}


def summarize(samples: list[dict[str, Any]], warmup: float, expected: dict[str, tuple[int, int]]) -> dict[str, Any]:
    warm = next((s for s in samples if s["t"] >= warmup), samples[-1])
    last = samples[-1]
    after = [s for s in samples if s["t"] >= warm["t"]]
    window = max(last["t"] - warm["t"], 1e-9)
    procs: dict[str, Any] = {}
    for name in last["procs"]:
        def series(field: str, ss: list[dict[str, Any]] = samples) -> list[float]:
            return [s["procs"][name][field] for s in ss
                    if name in s["procs"] and s["procs"][name].get(field) is not None]
        w, e = warm["procs"].get(name, {}), last["procs"].get(name, {})
        rss0, rss1 = w.get("rss"), e.get("rss")
        cpu = (100.0 * (e["cpu_s"] - w["cpu_s"]) / window
               if "cpu_s" in e and "cpu_s" in w and e.get("pid") == w.get("pid") else None)
        worker = name if name in EXCHANGES else None   # the supervisor names workers by exchange
        procs[name] = {
            "pid": e.get("pid"), "restarts": e.get("restarts", 0),
            "rss_warm_mb": rss0 / 1e6 if rss0 else None, "rss_end_mb": rss1 / 1e6 if rss1 else None,
            "growth_pct": 100.0 * (rss1 - rss0) / rss0 if rss0 and rss1 else None,
            "rss_max_after_warm_mb": max(series("rss", after), default=0) / 1e6,
            "fds_max": max(series("fds"), default=0), "tcp_max": max(series("tcp"), default=0),
            "tcp_sim_max": max(series("tcp_sim"), default=0),
            "expected_ws": expected.get(worker, (None, None))[0] if worker else None,
            "streams": expected.get(worker, (None, None))[1] if worker else None,
            "cpu_pct": cpu,
        }
    rates: dict[str, dict[str, float]] = {}
    for group in ("by_type", "by_exchange"):
        a, b = warm["redis"][group], last["redis"][group]
        rates[group] = {k: (b.get(k, 0) - a.get(k, 0)) / window for k in sorted(b)}
    return {"warm_t": warm["t"], "end_t": last["t"], "window_s": window, "procs": procs, "rates": rates,
            "events_per_s": sum(rates["by_type"].values()),
            "redis_streams": last["redis"]["streams"], "redis_used_memory_mb": last["redis"]["used_memory"] / 1e6}


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def report(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nMarket data, {args.symbols} symbols per exchange, every supported type, simulator rate "
          f"{args.md_rate}/s per topic, book_mode {args.book_mode}; measured {summary['window_s']:.0f} s after a "
          f"{summary['warm_t']:.0f} s warm-up")
    print(f"{'process':>16} {'restarts':>8} {'RSS warm':>9} {'RSS end':>8} {'growth':>7} {'RSS max':>8} "
          f"{'FDs max':>7} {'TCP max':>7} {'to sim':>6} {'WS exp':>6} {'streams':>7} {'CPU %':>6}")
    total_cpu = total_rss = 0.0
    for name, p in summary["procs"].items():
        total_cpu += p["cpu_pct"] or 0
        total_rss += p["rss_end_mb"] or 0
        print(f"{name:>16} {p['restarts']:>8} {fmt(p['rss_warm_mb'], '8.1f')}M {fmt(p['rss_end_mb'], '7.1f')}M "
              f"{fmt(p['growth_pct'], '+6.1f')}% {p['rss_max_after_warm_mb']:>7.1f}M {p['fds_max']:>7} "
              f"{p['tcp_max']:>7} {p['tcp_sim_max']:>6} {fmt(p['expected_ws'], '>6')} {fmt(p['streams'], '>7')} "
              f"{fmt(p['cpu_pct'], '6.1f')}")
    print(f"{'total':>16} {'':>8} {'':>9} {total_rss:>7.1f}M {'':>7} {'':>8} {'':>7} {'':>7} {'':>6} {'':>6} "
          f"{'':>7} {total_cpu:>6.1f}")
    print("TCP = WebSocket + REST keep-alive connections; WS exp = connections the feeds shard into")
    print("\nevents/s into Redis (entries added per stream type, measured window):")
    for kind, rate in summary["rates"]["by_type"].items():
        print(f"{kind:>28} {rate:>9.1f}")
    print(f"{'total':>28} {summary['events_per_s']:>9.1f}")
    print("per exchange: " + ", ".join(f"{k} {v:.1f}/s" for k, v in summary["rates"]["by_exchange"].items()))
    print(f"Redis: {summary['redis_streams']} streams, used_memory {summary['redis_used_memory_mb']:.1f} MB")
    workers = {n: p for n, p in summary["procs"].items() if p["expected_ws"] is not None}
    flat = [n for n, p in workers.items() if p["growth_pct"] is not None and p["growth_pct"] < 5.0]
    print(f"workers with RSS growth under 5 % after the warm-up: {len(flat)}/{len(workers)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds after the warm-up (default 600)")
    ap.add_argument("--warmup", type=float, default=120.0, help="seconds from collector start (default 120)")
    ap.add_argument("--symbols", type=int, default=50, help="symbols per exchange (default 50)")
    ap.add_argument("--md-rate", type=float, default=1.0,
                    help="simulator updates/s per subscribed topic (and Binance spot trades/s per symbol)")
    ap.add_argument("--interval", type=float, default=10.0, help="sampling interval, seconds (default 10)")
    ap.add_argument("--book-mode", choices=("top", "delta", "both"), default="both")
    ap.add_argument("--out", type=Path, default=None, help="write samples + summary as JSON here")
    args = ap.parse_args()
    if args.symbols < 2:
        ap.error("--symbols must be at least 2")
    expected = {name: expected_connections(name, args) for name in EXCHANGES}

    redis_proc, redis_url, _ = start_redis()
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    sim_proc, _first, ports = start_simulator_process(
        exchanges="all,deribit",
        extra_args=["--futures-symbols", "BTCUSDT,ETHUSDT", "--md-rate", str(args.md_rate),
                    "--trade-rate", str(args.md_rate), "--weight-limit", "0", "--seed", "5"])
    sims = {n: SimulatorClient(u) for n, u in ports.items()}
    run = Path(tempfile.mkdtemp(prefix="bench-md-"))
    http_port = free_port()
    col: subprocess.Popen | None = None
    samples: list[dict[str, Any]] = []
    try:
        list_symbols(sims, args.symbols)
        env = collector_env(run, redis_url, http_port, ports, args)
        out = open(run / "out.log", "wb")
        col = subprocess.Popen([sys.executable, "-m", "collector", "run"], env=env, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        t0 = time.monotonic()
        deadline = t0 + 60
        while True:
            if col.poll() is not None:
                print((run / "out.log").read_text()[-3000:])
                raise SystemExit("collector exited")
            try:
                kids = status(http_port).get("children", {})
                if kids and all(c.get("state") == "RUNNING" for c in kids.values()):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                print((run / "out.log").read_text()[-3000:])
                raise SystemExit("collector children not RUNNING after 60 s")
            time.sleep(0.2)
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        sim_port_set = {int(u.rsplit(":", 1)[1]) for u in ports.values()}
        sampler = Sampler(col.pid, http_port, r, sim_port_set, redis_port)
        print(f"collector up in {time.monotonic() - t0:.1f} s; expected WebSocket connections "
              + ", ".join(f"{n} {c} ({s} streams)" for n, (c, s) in expected.items()), flush=True)
        end = t0 + args.warmup + args.duration
        next_at = t0
        while True:
            now = time.monotonic()
            if now >= next_at:
                s = sampler.sample(now - t0)
                samples.append(s)
                workers = {n: p for n, p in s["procs"].items() if n in EXCHANGES}
                print(f"t={s['t']:6.0f}s  " + "  ".join(
                    f"{n} {p.get('rss', 0) / 1e6:.0f}M/{p.get('tcp', 0)}c"
                    for n, p in workers.items())
                    + f"  redis {sum(s['redis']['by_type'].values())} entries in {s['redis']['streams']} streams",
                    flush=True)
                next_at += args.interval
                if now >= end:
                    break
            if col.poll() is not None:
                raise SystemExit(f"collector exited with {col.returncode}")
            time.sleep(min(0.5, max(0.0, next_at - time.monotonic())))
    finally:
        if col is not None and col.poll() is None:
            col.send_signal(signal.SIGTERM)
            try:
                col.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(col.pid, signal.SIGKILL)
                col.wait(10)
        stop_simulator_process(sim_proc)
        redis_proc.terminate()
        redis_proc.wait(10)
    summary = summarize(samples, args.warmup, expected)
    report(summary, args)
    if args.out is not None:
        args.out.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v
                                                 for k, v in vars(args).items()},
                                        "expected_connections": expected, "samples": samples,
                                        "summary": summary}, indent=1))
        print(f"samples: {args.out}")
    print(f"collector log: {run / 'out.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
