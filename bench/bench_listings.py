"""Listing detection latency on all 13 exchanges (poll path and push paths), and the collector's footprint.

Real processes: a private redis-server, the simulator serving all 13 exchanges, `collector run`
with all 13 listing workers at default settings (poll every 5 s, up to 10% earlier at random). Each round lists a new
symbol on every exchange at once; latency = the `events:raw` entry id's millisecond part minus the
simulator's `visible_at_ms` (same machine clock). Prints p50/p99/max per exchange and the total
RSS and CPU of the collector's processes.

The push phase runs the same 13 workers with their push channels on (the default) and lists
new symbols on Binance USDⓈ-M and OKX spot/swap, which the push channels report between polls.

    python bench/bench_listings.py [--rounds 12] [--poll 5] [--path poll|push|both]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import redis  # noqa: E402

from bench._common import free_port, percentile, start_redis  # noqa: E402
from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process  # noqa: E402
from shared.exchanges import LISTING_SOURCES  # noqa: E402

MARKET = {name: "spot" for name in LISTING_SOURCES}
MARKET["bybit"] = "perp"


#: the push paths: (exchange, market) whose changes a push channel reports
PUSH_TARGETS = [("binance", "perp"), ("okx", "spot"), ("okx", "perp")]


def measure(args: argparse.Namespace, push: bool) -> tuple[dict[str, list[int]], dict[str, float]]:
    """One collector run with all 13 workers. ``push`` False: listing push channels off, every
    exchange measured on its poll path; True: push channels on (the default), the PUSH_TARGETS
    measured. Returns latencies per target and the footprint."""
    redis_proc, redis_url, _ = start_redis()
    sim_proc, _first, ports = start_simulator_process(
        exchanges="all", extra_args=["--filler", str(args.filler), "--weight-limit", "0",
                                     "--futures-symbols", "BTCUSDT,ETHUSDT,SOLUSDT"])
    sims = {n: SimulatorClient(u) for n, u in ports.items()}
    run = Path(tempfile.mkdtemp(prefix="bench-listings-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env.update({"COLLECTOR_NODE_ID": "BENCH", "COLLECTOR_RUN_DIR": str(run), "COLLECTOR_REDIS__URL": redis_url,
                "COLLECTOR_HTTP__PORT": str(port), "COLLECTOR_EXCHANGES__BINANCE__TRADES": "false"})
    for n in LISTING_SOURCES:
        up = n.upper()
        env[f"COLLECTOR_EXCHANGES__{up}__ENABLED"] = "true"
        env[f"COLLECTOR_EXCHANGES__{up}__REST_URL"] = ports[n]
        env[f"COLLECTOR_EXCHANGES__{up}__WS_URL"] = ports[n].replace("http://", "ws://")
        env[f"COLLECTOR_EXCHANGES__{up}__POLL_INTERVAL"] = str(args.poll)
        env[f"COLLECTOR_EXCHANGES__{up}__LISTING_PUSH"] = "true" if push else "false"
    col = subprocess.Popen([sys.executable, "-m", "collector", "run"], env=env,
                           stdout=open(run / "out.log", "wb"), stderr=subprocess.STDOUT)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    targets = [(n, m) for n, m in PUSH_TARGETS] if push else [(n, MARKET[n]) for n in LISTING_SOURCES]
    lat: dict[str, list[int]] = {f"{n}:{m}": [] for n, m in targets}
    try:
        deadline = time.monotonic() + 90
        probe = {("binance", "perp"): "perp:BTCUSDT", ("okx", "perp"): "perp:BTC-USDT-SWAP"}

        def seeded(n: str, m: str) -> bool:
            field = probe.get((n, m))
            return bool(r.hexists(f"known:pairs:{n}", field) if field else r.exists(f"known:pairs:{n}"))

        while not all(seeded(n, m) for n, m in targets + [(x, MARKET[x]) for x in LISTING_SOURCES]):
            if time.monotonic() > deadline or col.poll() is not None:
                print((run / "out.log").read_text()[-3000:])
                raise SystemExit("collector did not seed every exchange")
            time.sleep(0.2)
        if push:
            time.sleep(2)  # the push connections are up and subscribed
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
            pids = [col.pid] + [c["pid"] for c in json.loads(resp.read())["children"].values() if c.get("pid")]
        procs = [psutil.Process(p) for p in pids]
        cpu0 = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        t0 = time.monotonic()
        last_id = "0-0"
        rng = __import__("random").Random(7)
        tag = "BP" if push else "BQ"
        for i in range(args.rounds):
            time.sleep(rng.uniform(0, args.poll))  # changes land at random points of the poll cycle
            visible = {}
            for n, m in targets:
                res = sims[n].add_listing(f"{tag}{i:03d}", "USDT", status="trading", market=m)
                visible[f"{n}:{m}"] = res["visible_at_ms"]
            pending = set(visible)
            round_deadline = time.monotonic() + args.poll * 3 + 5
            while pending and time.monotonic() < round_deadline:
                for eid, f in r.xrange("events:raw", f"({last_id}", "+"):
                    last_id = eid
                    key = f"{f['exchange']}:{f['market']}"
                    if f["event"] == "listing" and f["base"] == f"{tag}{i:03d}" and key in pending:
                        lat[key].append(int(eid.split("-")[0]) - visible[key])
                        pending.discard(key)
                time.sleep(0.005)
            if pending:
                print(f"round {i}: no listing from {sorted(pending)}")
        wall = time.monotonic() - t0
        cpu = sum(p.cpu_times().user + p.cpu_times().system for p in procs) - cpu0
        rss = sum(p.memory_info().rss for p in procs)
    finally:
        col.send_signal(signal.SIGTERM)
        try:
            col.wait(60)
        except subprocess.TimeoutExpired:
            col.kill()
        stop_simulator_process(sim_proc)
        redis_proc.terminate()
        redis_proc.wait(10)
    return lat, {"processes": len(pids), "rss": rss, "cpu_pct": 100 * cpu / wall, "wall": wall}


def report(title: str, lat: dict[str, list[int]], target_ms: float) -> None:
    print(f"\n{title}; latency = simulator change -> events:raw entry (ms)")
    print(f"{'exchange:market':>16} {'n':>3} {'p50':>7} {'p99':>7} {'max':>7}")
    allv: list[int] = []
    for key, v in lat.items():
        v = sorted(v)
        allv += v
        print(f"{key:>16} {len(v):>3} {percentile(v, 50):>7.0f} {percentile(v, 99):>7.0f} "
              f"{max(v) if v else float('nan'):>7.0f}")
    allv.sort()
    print(f"{'all':>16} {len(allv):>3} {percentile(allv, 50):>7.0f} {percentile(allv, 99):>7.0f} "
          f"{allv[-1] if allv else float('nan'):>7.0f}   (target p99: {target_ms:.0f} ms)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--poll", type=float, default=5.0)
    ap.add_argument("--filler", type=int, default=500, help="extra symbols per exchange (realistic list sizes)")
    ap.add_argument("--path", choices=("poll", "push", "both"), default="both")
    args = ap.parse_args()
    if args.path in ("poll", "both"):
        lat, fp = measure(args, push=False)
        report(f"Listing detection, poll path: {args.rounds} rounds, poll {args.poll:.1f} s (jitter -10%), "
               f"{args.filler} filler symbols per exchange", lat, args.poll * 1000 + 250)
        print(f"\ncollector (parent + publisher + 13 workers): {fp['processes']} processes, RSS "
              f"{fp['rss'] / 1e6:.0f} MB total, CPU {fp['cpu_pct']:.1f}% of one core over {fp['wall']:.0f} s")
    if args.path in ("push", "both"):
        lat, fp = measure(args, push=True)
        report(f"Listing detection, push path (Binance USDⓈ-M !contractInfo, OKX instruments): {args.rounds} "
               f"rounds, all 13 workers polling every {args.poll:.1f} s as well", lat, 250)
        print(f"\ncollector with push channels: {fp['processes']} processes, RSS {fp['rss'] / 1e6:.0f} MB total, "
              f"CPU {fp['cpu_pct']:.1f}% of one core over {fp['wall']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
