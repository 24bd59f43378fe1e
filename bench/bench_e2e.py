"""End-to-end benchmark: simulator -> Binance worker -> publisher -> Redis.

Runs the real processes (private redis-server, `collector simulate`, `collector run`), offers
trades at fixed rates and then as fast as the pipeline takes them (firehose), and prints per
scenario: events/s stored, latency from frame receipt (the worker's ts_receive) to the XADD
(the entry id's millisecond part; Redis and the worker share the machine clock), the publisher's
own receipt -> XADD-acknowledged histogram (from /metrics), and CPU% / RSS of every process.

    python bench/bench_e2e.py [--window 10] [--rates 5000,20000] [--no-firehose]
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

import redis  # noqa: E402

from bench._common import ProcWatch, free_port, percentile, start_redis  # noqa: E402
from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process  # noqa: E402

NSYM = 10


def http_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


def latency_buckets(port: int) -> list[tuple[float, float]]:
    """The publisher's receipt -> XADD-acknowledged histogram from /metrics: [(le, cumulative count)]."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    buckets = []
    for line in text.splitlines():
        if line.startswith("collector_publish_latency_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    return sorted(buckets)


def window_quantiles(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> tuple[float, float]:
    """p50/p99 (ms) of the observations made between two histogram readings (linear within buckets)."""
    prev = dict(before)
    buckets = [(le, c - prev.get(le, 0.0)) for le, c in after]
    if not buckets or buckets[-1][1] <= 0:
        return float("nan"), float("nan")
    total = buckets[-1][1]

    def q(p: float) -> float:
        target = p * total
        prev_le, prev_c = 0.0, 0.0
        for le, c in buckets:
            if c >= target:
                if le == float("inf"):
                    return prev_le * 1000
                frac = (target - prev_c) / max(c - prev_c, 1e-9)
                return (prev_le + frac * (le - prev_le)) * 1000
            prev_le, prev_c = le, c
        return prev_le * 1000

    return q(0.5), q(0.99)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--rates", default="5000,20000")
    ap.add_argument("--no-firehose", action="store_true")
    args = ap.parse_args()

    redis_proc, redis_url, _ = start_redis()
    sim_proc, sim_url = start_simulator_process(extra_args=["--weight-limit", "0"])
    sim = SimulatorClient(sim_url)
    sim.add_filler_symbols(NSYM)
    natives = [f"SIM{i:05d}USDT" for i in range(1, NSYM + 1)]
    canon = [f"SIM{i:05d}-USDT" for i in range(1, NSYM + 1)]
    streams = [f"md:trade:binance:spot:{c}" for c in canon]
    run = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env.update({
        "COLLECTOR_NODE_ID": "BENCH", "COLLECTOR_RUN_DIR": str(run), "COLLECTOR_REDIS__URL": redis_url,
        "COLLECTOR_HTTP__PORT": str(port),
        "COLLECTOR_EXCHANGES__BINANCE__REST_URL": sim_url, "COLLECTOR_EXCHANGES__BINANCE__WS_URL": sim.ws_url,
        "COLLECTOR_EXCHANGES__BINANCE__SYMBOLS": json.dumps(canon),
        "COLLECTOR_PUBLISHER__MAXLEN": json.dumps({"default": 5_000_000}),
        "COLLECTOR_SUPERVISOR__MAX_RSS_MB": "4000",
    })
    col = subprocess.Popen([sys.executable, "-m", "collector", "run"], env=env,
                           stdout=open(run / "out.log", "wb"), stderr=subprocess.STDOUT)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    rows = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                st = http_json(port, "/status")
                ch = st["children"]
                if all(c["state"] == "RUNNING" for c in ch.values()) and ch["binance"].get("connection") == "connected":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                print((run / "out.log").read_text()[-3000:])
                raise SystemExit("collector did not come up")
            time.sleep(0.2)
        pids = {"collector": col.pid, "publisher": ch["publisher"]["pid"], "worker": ch["binance"]["pid"],
                "redis": redis_proc.pid, "simulator": sim_proc.pid}
        scenarios: list[tuple[str, float | None]] = [(f"{int(x)}/s", float(x)) for x in args.rates.split(",") if x]
        if not args.no_firehose:
            scenarios.append(("firehose", None))
        for label, rate in scenarios:
            if rate is None:
                sim.start_firehose(natives, batch=200)
            else:
                sim.set_trade_rate(rate / NSYM)
            time.sleep(args.warmup)
            watch = ProcWatch(pids)
            n0 = sum(r.xlen(s) for s in streams)
            h0 = latency_buckets(port)
            t0 = time.time()
            watch.begin()
            time.sleep(args.window)
            n1 = sum(r.xlen(s) for s in streams)
            h1 = latency_buckets(port)
            t1 = time.time()
            usage = watch.end()
            if rate is None:
                sim.stop_firehose()
            else:
                sim.set_trade_rate(0)
            # latency sample: entries stored inside the window, frame receipt -> XADD
            lat = []
            lo, hi = int(t0 * 1000), int(t1 * 1000)
            for s in streams:
                for slice_start in range(lo, hi, max(1, (hi - lo) // 10)):
                    for eid, f in r.xrange(s, f"{slice_start}-0", f"{slice_start + (hi - lo) // 10}-99999999", count=300):
                        lat.append(int(eid.split("-")[0]) - int(f["ts_receive"]))
            lat.sort()
            p50h, p99h = window_quantiles(h0, h1)
            st = http_json(port, "/status")
            drops = st["children"]["binance"].get("drops", 0)
            rows.append((label, (n1 - n0) / (t1 - t0), percentile(lat, 50), percentile(lat, 99), len(lat),
                         p50h, p99h, usage, drops))
            time.sleep(2)
    finally:
        col.send_signal(signal.SIGTERM)
        try:
            col.wait(40)
        except subprocess.TimeoutExpired:
            col.kill()
        stop_simulator_process(sim_proc)
        redis_proc.terminate()
        redis_proc.wait(10)

    print(f"\nEnd-to-end (simulator -> worker -> publisher -> Redis), {NSYM} symbols, window {args.window:.0f} s, "
          f"{os.cpu_count()} CPUs")
    print(f"{'offered':>10} {'stored ev/s':>12} {'rx->XADD p50':>13} {'p99 (ms)':>9} {'n':>6} "
          f"{'hist p50':>9} {'hist p99':>9} {'drops':>6}")
    for label, evs, p50, p99, n, p50h, p99h, _, drops in rows:
        print(f"{label:>10} {evs:>12,.0f} {p50:>13.1f} {p99:>9.1f} {n:>6} {p50h:>9.2f} {p99h:>9.2f} {drops:>6}")
    print("\nCPU% (100 = one core) / RSS MB per process")
    names = ["simulator", "worker", "publisher", "redis", "collector"]
    print(f"{'offered':>10} " + " ".join(f"{n:>18}" for n in names))
    for label, *_rest in rows:
        usage = _rest[6]
        print(f"{label:>10} " + " ".join(f"{usage[n]['cpu_pct']:>8.0f}% {usage[n]['rss_mb']:>6.0f}MB" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
