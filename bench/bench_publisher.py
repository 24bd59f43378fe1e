"""Publisher benchmark: K client processes -> publisher process -> private redis-server.

Starts its own redis-server (no persistence) on a free port and the real publisher process
(``collector.publisher.publisher_main``, spawn start method, this script playing the parent), then
1-4 client processes that each play a worker: one connection, hello, then ``events`` frames of 100
trade wire events (11 fields each), stamped with ``time.monotonic_ns()`` when the frame is sent.

Two modes per run:
- ``max``: every client pushes as fast as it can; throughput = events in Redis / time;
- ``--rate R``: the clients together offer R events/s (paced per frame); shows latency at a
  sustainable rate.

Then (``--raw``, on by default) the cost of the idempotent apply itself, without the publisher:
K client processes write the same trade events straight to Redis, pre-packed and pipelined
(1000 events per round trip), once as plain ``XADD``s and once as ``EVALSHA`` of the apply
script (batches of 100 with a producer watermark and per-stream high-watermark checks).

Printed: events/s achieved, p50/p99 latency (frame stamp -> XADD acknowledged, from the
publisher's own histogram, interpolated within its buckets), CPU% and RSS of the publisher,
redis-server and the clients (psutil, over the measured window).

    /work/venv/bin/python bench/bench_publisher.py --events 400000 --clients 2
    /work/venv/bin/python bench/bench_publisher.py --events 300000 --clients 1 --rate 50000
    /work/venv/bin/python bench/bench_publisher.py --events 200000 --raw-only
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from collector import redis_scripts as scripts  # noqa: E402
from collector.publisher import publisher_main  # noqa: E402
from shared import ipc  # noqa: E402
from shared.events import Trade  # noqa: E402
from shared.settings import load_settings  # noqa: E402

BATCH = 100
SYMBOLS = ["BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT", "ADA-USDT",
           "DOGE-USDT", "BNB-USDT", "TRX-USDT", "DOT-USDT", "LTC-USDT"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: Path) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found on PATH (Debian: apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis

    r = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            r.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                sys.exit("redis-server did not start")
            time.sleep(0.05)
    return proc, port


def _publisher(settings, sock) -> None:
    sys.exit(publisher_main(settings, sock))


def _client(sock_path: str, idx: int, n_events: int, rate: float, ready, go) -> None:
    """One worker: pre-built events (distinct trade ids); each frame restamped and encoded at send."""
    exchange = f"bench{idx}"
    events = []
    for i in range(n_events):
        sym = SYMBOLS[i % len(SYMBOLS)]
        native = sym.replace("-", "")
        t = Trade(exchange, "spot", sym, native, str(i), "65000.12", "0.0015", "buy" if i & 1 else "sell",
                  1700000000000 + i, 1700000000050 + i)
        events.append(t.to_wire(0) + [str(i)])  # a monotonic id, as Binance/OKX trades carry
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    ipc.send_msg(s, {"t": "hello", "exchange": exchange, "pid": os.getpid(), "producer": f"{exchange}.{os.getpid()}"})

    def read_acks() -> None:
        try:
            while s.recv(1 << 16):
                pass
        except OSError:
            pass

    drain = threading.Thread(target=read_acks, daemon=True)
    drain.start()
    ready.release()
    go.wait()
    start = time.monotonic()
    interval = BATCH / rate if rate > 0 else 0.0
    for k in range(0, n_events, BATCH):
        if interval:
            due = start + (k // BATCH) * interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        batch = events[k:k + BATCH]
        now = time.monotonic_ns()
        for ev in batch:
            ev[4] = now
        s.sendall(ipc.encode({"t": "events", "exchange": exchange, "seq": k // BATCH, "events": batch}))
    # half-close, then read the acks until the publisher closes: closing with unread acks in the
    # socket would reset the connection and the publisher would lose frames not yet read
    s.shutdown(socket.SHUT_WR)
    drain.join(300)
    s.close()


class Parent:
    """The status link's parent end: keeps the latest beat."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ready = threading.Event()
        self.last: dict = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                m = ipc.recv_msg(self.sock)
                if m is None:
                    return
                if m.get("t") == "ready":
                    self.ready.set()
                elif m.get("t") == "beat":
                    self.last = m["stats"]
        except OSError:
            return


def quantile(hist: dict, q: float) -> float | None:
    """Interpolated quantile (seconds) from cumulative [[le, count], ...] buckets."""
    total = hist.get("count", 0)
    if not total:
        return None
    target = q * total
    prev_le, prev_c = 0.0, 0
    for le, c in hist["buckets"]:
        if c >= target:
            frac = (target - prev_c) / (c - prev_c) if c > prev_c else 1.0
            return prev_le + (le - prev_le) * frac
        prev_le, prev_c = le, c
    return float("inf")


def cpu_seconds(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def run(n_events: int, n_clients: int, rate: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
    redis_proc, port = start_redis(tmp)
    settings = load_settings(
        run_dir=tmp / "run", log_dir=tmp / "logs", node_id="BENCH",
        redis={"url": f"redis://127.0.0.1:{port}/0"},
        publisher={"buffer_max_events": max(n_events, 100), "maxlen": {"default": n_events + 1000},
                   "heartbeat_interval": 30},
        exchanges={"binance": {"enabled": False}},
    )
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = socket.socketpair()
    pub = ctx.Process(target=_publisher, args=(settings, child_end), daemon=True)
    pub.start()
    child_end.close()
    parent = Parent(parent_end)
    if not parent.ready.wait(20):
        sys.exit("publisher did not become ready")
    import redis

    r = redis.Redis(port=port)
    per_client = n_events // n_clients
    total = per_client * n_clients
    go = ctx.Event()
    ready = ctx.Semaphore(0)
    clients = [ctx.Process(target=_client, args=(str(settings.publisher_socket), i, per_client,
                                                   rate / n_clients if rate > 0 else 0.0, ready, go), daemon=True)
               for i in range(n_clients)]
    for c in clients:
        c.start()
    for _ in clients:  # each has built its events and connected
        if not ready.acquire(timeout=120):
            sys.exit("a client did not start")
    time.sleep(0.2)
    procs = {"publisher": psutil.Process(pub.pid), "redis": psutil.Process(redis_proc.pid)}
    client_ps = [psutil.Process(c.pid) for c in clients]
    cpu0 = {k: cpu_seconds(p) for k, p in procs.items()}
    cpu0["clients"] = sum(cpu_seconds(p) for p in client_ps)
    rss_max = {"publisher": 0, "redis": 0}
    keys = [f"md:trade:bench{i}:spot:{s}" for i in range(n_clients) for s in SYMBOLS]
    t0 = time.monotonic()
    go.set()
    done = 0
    while True:
        time.sleep(0.02)
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.xlen(k)
        done = sum(pipe.execute())
        for k, p in procs.items():
            try:
                rss_max[k] = max(rss_max[k], p.memory_info().rss)
            except psutil.Error:
                pass
        if done >= total or time.monotonic() - t0 > 300:
            break
    elapsed = time.monotonic() - t0
    cpu1 = {k: cpu_seconds(p) for k, p in procs.items()}
    cpu1["clients"] = sum(cpu_seconds(p) for p in client_ps)
    for c in clients:
        c.join(10)
    time.sleep(1.2)  # one more beat with the final histogram
    stats = parent.last
    pub.terminate()
    pub.join(15)
    redis_proc.terminate()
    redis_proc.wait(10)
    shutil.rmtree(tmp, ignore_errors=True)
    lat = stats.get("latency", {})
    dropped = sum(s.get("dropped", 0) for s in stats.get("streams", {}).values())
    return {
        "events": total, "clients": n_clients, "offered": rate or "max", "delivered": done,
        "seconds": elapsed, "events_per_s": done / elapsed, "dropped": dropped,
        "p50_ms": (quantile(lat, 0.5) or 0) * 1000, "p99_ms": (quantile(lat, 0.99) or 0) * 1000,
        "cpu_publisher": 100 * (cpu1["publisher"] - cpu0["publisher"]) / elapsed,
        "cpu_redis": 100 * (cpu1["redis"] - cpu0["redis"]) / elapsed,
        "cpu_clients": 100 * (cpu1["clients"] - cpu0["clients"]) / elapsed,
        "rss_publisher_mb": rss_max["publisher"] / 2**20, "rss_redis_mb": rss_max["redis"] / 2**20,
    }


def _raw_client(port: int, idx: int, n_events: int, mode: str, ready, go) -> None:
    """Plain pipelined XADD vs EVALSHA of the apply script, straight to Redis (no publisher)."""
    import hiredis

    exchange = f"raw{idx}"
    cmds: list[bytes] = []
    per_round = 1000
    for k in range(0, n_events, BATCH):
        keys: list[str] = []
        args: list[str] = []
        xadds: list[bytes] = []
        for i in range(k, min(k + BATCH, n_events)):
            sym = SYMBOLS[i % len(SYMBOLS)]
            t = Trade(exchange, "spot", sym, sym.replace("-", ""), str(i), "65000.12", "0.0015",
                      "buy" if i & 1 else "sell", 1700000000000 + i, 1700000000050 + i)
            stream, fields = t.stream_key(), t.fields()
            if mode == "xadd":
                xadds.append(hiredis.pack_command(("XADD", stream, "MAXLEN", "~", str(n_events + 1000), "*", *fields)))
            else:
                keys += [stream, scripts.HWM_PREFIX + stream]
                args += ["m", str(i), str(n_events + 1000), str(len(fields)), *fields]
        if mode == "xadd":
            cmds.extend(xadds)
        else:
            cmds.append(scripts.pack_apply(f"pub:wm:BENCH:{exchange}", "", scripts.part_position(k // BATCH, 0),
                                           "600", "600", "300", keys, args))
    per_cmd = 1 if mode == "xadd" else BATCH
    group = max(1, per_round // per_cmd)
    rounds = [(b"".join(cmds[j:j + group]), len(cmds[j:j + group])) for j in range(0, len(cmds), group)]
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = hiredis.Reader()
    ready.release()
    go.wait()
    for data, n in rounds:
        s.sendall(data)
        got = 0
        while got < n:
            reader.feed(s.recv(1 << 20))
            while got < n:
                rep = reader.gets()
                if rep is False:
                    break
                if isinstance(rep, hiredis.ReplyError):
                    raise SystemExit(f"redis error: {rep}")
                got += 1
    s.close()


def run_raw(n_events: int, n_clients: int, mode: str) -> float:
    """events/s of ``mode`` (xadd | script) with ``n_clients`` processes straight to Redis."""
    import redis

    tmp = Path(tempfile.mkdtemp(prefix="bench-raw-", dir="/tmp"))
    redis_proc, port = start_redis(tmp)
    try:
        r = redis.Redis(port=port)
        r.script_load(scripts.APPLY_BATCH)
        ctx = multiprocessing.get_context("spawn")
        go = ctx.Event()
        ready = ctx.Semaphore(0)
        per = n_events // n_clients
        clients = [ctx.Process(target=_raw_client, args=(port, i, per, mode, ready, go), daemon=True)
                   for i in range(n_clients)]
        for c in clients:
            c.start()
        for _ in clients:
            if not ready.acquire(timeout=120):
                sys.exit("a raw client did not start")
        t0 = time.monotonic()
        go.set()
        for c in clients:
            c.join(300)
        elapsed = time.monotonic() - t0
        keys = [f"md:trade:raw{i}:spot:{s}" for i in range(n_clients) for s in SYMBOLS]
        total = sum(r.xlen(k) for k in keys)
        if total != per * n_clients:
            sys.exit(f"raw {mode}: {total} entries, expected {per * n_clients}")
        return total / elapsed
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=400_000, help="total trade events (default 400000)")
    ap.add_argument("--clients", type=int, default=0, help="client processes 1-4 (default: run 1, 2 and 4)")
    ap.add_argument("--rate", type=float, default=0.0, help="offered events/s in total (default: as fast as possible)")
    ap.add_argument("--raw-only", action="store_true", help="only the straight-to-Redis XADD vs script comparison")
    ap.add_argument("--no-raw", action="store_true", help="skip the straight-to-Redis comparison")
    args = ap.parse_args()
    counts = [args.clients] if args.clients else [1, 2, 4]
    if not args.raw_only:
        run_publisher(args, counts)
    if not args.no_raw:
        print(f"\nstraight to Redis, pre-packed, 1000 events per round trip (no publisher): "
              f"plain XADD vs the idempotent apply script (EVALSHA, {BATCH} events each)")
        print(f"{'clients':>7} {'XADD ev/s':>12} {'script ev/s':>12} {'script/XADD':>11}")
        for n in counts:
            x = run_raw(args.events, n, "xadd")
            sc = run_raw(args.events, n, "script")
            print(f"{n:>7} {x:>12,.0f} {sc:>12,.0f} {sc / x:>10.0%}", flush=True)


def run_publisher(args: argparse.Namespace, counts: list[int]) -> None:
    print(f"machine: {os.cpu_count()} CPUs; batches of {BATCH} trade events (11 fields); "
          f"latency = frame stamp -> XADD acknowledged (publisher histogram)")
    print(f"{'clients':>7} {'offered':>8} {'events':>8} {'events/s':>10} {'dropped':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'CPU pub':>7} {'CPU redis':>9} {'CPU clients':>11} {'RSS pub MB':>10} {'RSS redis MB':>12}")
    for n in counts:
        if not 1 <= n <= 4:
            sys.exit("--clients must be 1-4")
        res = run(args.events, n, args.rate)
        print(f"{res['clients']:>7} {str(res['offered']):>8} {res['delivered']:>8} {res['events_per_s']:>10,.0f} "
              f"{res['dropped']:>7} {res['p50_ms']:>8.2f} {res['p99_ms']:>8.2f} {res['cpu_publisher']:>6.0f}% "
              f"{res['cpu_redis']:>8.0f}% {res['cpu_clients']:>10.0f}% {res['rss_publisher_mb']:>10.0f} "
              f"{res['rss_redis_mb']:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
