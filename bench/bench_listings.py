"""Listing detection latency on all 13 exchanges (poll path), and the collector's footprint.

Real processes: a private redis-server, the simulator serving all 13 exchanges, `collector run`
with all 13 listing workers at default settings (poll every 5 s, up to 10% earlier at random). Each round lists a new
symbol on every exchange at once; latency = the `events:raw` entry id's millisecond part minus the
simulator's `visible_at_ms` (same machine clock). Prints p50/p99/max per exchange and the total
RSS and CPU of the collector's processes.

    python bench/bench_listings.py [--rounds 12] [--poll 5]
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--poll", type=float, default=5.0)
    ap.add_argument("--filler", type=int, default=500, help="extra symbols per exchange (realistic list sizes)")
    args = ap.parse_args()

    redis_proc, redis_url, _ = start_redis()
    sim_proc, _first, ports = start_simulator_process(exchanges="all", extra_args=["--filler", str(args.filler),
                                                                                 "--weight-limit", "0"])
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
        env[f"COLLECTOR_EXCHANGES__{up}__POLL_INTERVAL"] = str(args.poll)
    col = subprocess.Popen([sys.executable, "-m", "collector", "run"], env=env,
                           stdout=open(run / "out.log", "wb"), stderr=subprocess.STDOUT)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    lat: dict[str, list[int]] = {n: [] for n in LISTING_SOURCES}
    try:
        deadline = time.monotonic() + 90
        while not all(r.exists(f"known:pairs:{n}") for n in LISTING_SOURCES):
            if time.monotonic() > deadline or col.poll() is not None:
                print((run / "out.log").read_text()[-3000:])
                raise SystemExit("collector did not seed every exchange")
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
            pids = [col.pid] + [c["pid"] for c in json.loads(resp.read())["children"].values() if c.get("pid")]
        procs = [psutil.Process(p) for p in pids]
        cpu0 = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        t0 = time.monotonic()
        last_id = "0-0"
        rng = __import__("random").Random(7)
        for i in range(args.rounds):
            time.sleep(rng.uniform(0, args.poll))  # changes land at random points of the poll cycle
            visible = {}
            for n in LISTING_SOURCES:
                res = sims[n].add_listing(f"BQ{i:03d}", "USDT", status="trading", market=MARKET[n])
                visible[n] = res["visible_at_ms"]
            pending = set(LISTING_SOURCES)
            round_deadline = time.monotonic() + args.poll * 3 + 5
            while pending and time.monotonic() < round_deadline:
                for eid, f in r.xrange("events:raw", f"({last_id}", "+"):
                    last_id = eid
                    if f["event"] == "listing" and f["base"] == f"BQ{i:03d}" and f["exchange"] in pending:
                        lat[f["exchange"]].append(int(eid.split("-")[0]) - visible[f["exchange"]])
                        pending.discard(f["exchange"])
                time.sleep(0.02)
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

    print(f"\nListing detection, poll path: {args.rounds} rounds, poll {args.poll:.1f} s (jitter -10%), "
          f"{args.filler} filler symbols per exchange; latency = simulator change -> events:raw entry (ms)")
    print(f"{'exchange':>10} {'n':>3} {'p50':>7} {'p99':>7} {'max':>7}")
    allv = []
    for n in LISTING_SOURCES:
        v = sorted(lat[n])
        allv += v
        print(f"{n:>10} {len(v):>3} {percentile(v, 50):>7.0f} {percentile(v, 99):>7.0f} {max(v) if v else float('nan'):>7.0f}")
    allv.sort()
    print(f"{'all':>10} {len(allv):>3} {percentile(allv, 50):>7.0f} {percentile(allv, 99):>7.0f} {allv[-1] if allv else float('nan'):>7.0f}"
          f"   (target p99: poll + 250 ms = {args.poll * 1000 + 250:.0f} ms)")
    print(f"\ncollector (parent + publisher + 13 workers): {len(pids)} processes, RSS {rss / 1e6:.0f} MB total, "
          f"CPU {100 * cpu / wall:.1f}% of one core over {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
