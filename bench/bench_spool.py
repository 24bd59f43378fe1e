"""Disk spool benchmark (collector/spool.py): append throughput per fsync policy, the longest
stall of the appending thread (the publisher's event loop), and replay throughput.

Records are publisher part payloads (``pack_part`` of a hiredis-packed 11-field trade XADD,
~300 bytes: a one-event part; real parts hold up to 1000 events, so records/s x events/part is the
event rate) unless ``--size`` is given. For each policy: append ``--records`` as fast as one
thread can, then ``sync()`` (everything written and fsynced); rate = records / (first append ->
sync done). "max append batch" = the longest time one batch of 1000 ``append`` calls took on the
appending thread (what the event loop would feel). Replay = ``read(1000)`` + ``ack`` until empty
(the cursor written at close), on a fresh open of the spool (page cache warm).
Paced: ``--rate`` records/s for ``--paced-seconds``, appended every 1 ms tick as an event loop
would while Redis is down; p50/p99/max time of one tick's appends (the loop's cost and stalls).

    /work/venv/bin/python bench/bench_spool.py
    /work/venv/bin/python bench/bench_spool.py --records 500000 --dir /var/tmp --size 1000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import hiredis  # noqa: E402

from collector.spool import Spool, pack_part  # noqa: E402


def make_payloads(n_distinct: int, size: int | None) -> list[bytes]:
    out = []
    for i in range(n_distinct):
        if size:
            out.append((b"%08d" % i) * (size // 8 + 1))
            out[-1] = out[-1][:size]
            continue
        fields = ["exchange", "binance", "symbol", "BTC-USDT", "type", "trade", "id", str(10_000_000 + i),
                  "price", f"{60000 + i % 1000}.12", "qty", "0.00123", "side", "buy", "ts", str(1_700_000_000_000 + i),
                  "rx", str(1_700_000_000_001 + i), "node", "NODE_A", "v", "1"]
        packed = hiredis.pack_command(("XADD", "md:binance:BTC-USDT:trade", "MAXLEN", "~", "100000", "*", *fields))
        out.append(pack_part(packed, ["binance|trade"], 1_700_000_000_000 + i))
    return out


def bench_policy(base: Path, policy: str, records: int, payloads: list[bytes], interval_ms: int) -> None:
    d = base / f"spool-{policy}"
    sp = Spool(d, max_bytes=64 * 1024 ** 3, segment_bytes=16 * 1024 ** 2, fsync=policy,
               fsync_interval_ms=interval_ms)
    sp.open()
    np_ = len(payloads)
    total_bytes = 0
    worst = 0.0
    t0 = time.perf_counter()
    i = 0
    while i < records:
        b0 = time.perf_counter()
        for j in range(i, min(i + 1000, records)):
            p = payloads[j % np_]
            if sp.append(p) is None:
                raise SystemExit(f"append refused: {sp.stats()}")
            total_bytes += len(p)
        worst = max(worst, time.perf_counter() - b0)
        i += 1000
    t_app = time.perf_counter() - t0
    sp.sync(timeout=600)
    t_all = time.perf_counter() - t0
    st = sp.stats()
    sp.close()
    print(f"{policy:>8} | {records / t_all:>12,.0f} | {total_bytes / t_all / 1e6:>8.1f} | "
          f"{records / t_app:>14,.0f} | {worst * 1000:>8.2f} | {st['fsyncs']:>6} | {st['segments']:>4}")

    sp = Spool(d, max_bytes=64 * 1024 ** 3, segment_bytes=16 * 1024 ** 2, fsync=policy)
    t0 = time.perf_counter()
    sp.open()
    t_open = time.perf_counter() - t0
    n = 0
    t0 = time.perf_counter()
    while True:
        got = sp.read(1000)
        if not got:
            break
        n += len(got)
        sp.ack(len(got))
    sp.close()
    t_replay = time.perf_counter() - t0
    if n != records:
        raise SystemExit(f"replayed {n} of {records}")
    REPLAY.append(f"{policy:>8} | {n / t_replay:>12,.0f} | {total_bytes / t_replay / 1e6:>8.1f} | "
                  f"{t_open * 1000:>8.1f}")
    shutil.rmtree(d, ignore_errors=True)


REPLAY: list[str] = []


def bench_paced(base: Path, policy: str, rate: int, seconds: float, payloads: list[bytes],
                interval_ms: int) -> None:
    d = base / f"paced-{policy}"
    sp = Spool(d, max_bytes=64 * 1024 ** 3, fsync=policy, fsync_interval_ms=interval_ms)
    sp.open()
    per_tick = max(rate // 1000, 1)
    ticks: list[float] = []
    i = 0
    t0 = time.perf_counter()
    next_tick = t0
    while next_tick - t0 < seconds:
        now = time.perf_counter()
        if now < next_tick:
            time.sleep(next_tick - now)
        b0 = time.perf_counter()
        for _ in range(per_tick):
            sp.append(payloads[i % len(payloads)])
            i += 1
        ticks.append(time.perf_counter() - b0)
        next_tick += 0.001
    sp.sync(timeout=600)
    st = sp.stats()
    sp.close()
    shutil.rmtree(d, ignore_errors=True)
    ticks.sort()
    print(f"{policy:>8} | {i / seconds:>10,.0f} | {ticks[len(ticks) // 2] * 1000:>7.3f} | "
          f"{ticks[int(len(ticks) * 0.99)] * 1000:>7.3f} | {ticks[-1] * 1000:>7.2f} | {st['fsyncs']:>6}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=None, help="payload bytes (default: a packed trade XADD)")
    ap.add_argument("--dir", default=None, help="parent directory (default: the temp dir)")
    ap.add_argument("--interval-ms", type=int, default=200)
    ap.add_argument("--policies", default="always,interval,never")
    ap.add_argument("--rate", type=int, default=50_000, help="paced run: records/s (0: skip)")
    ap.add_argument("--paced-seconds", type=float, default=3.0)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-spool-", dir=args.dir))
    payloads = make_payloads(1000, args.size)
    avg = sum(map(len, payloads)) / len(payloads)
    print(f"{args.records} records of ~{avg:.0f} B payload in {base} (fsync interval {args.interval_ms} ms)")
    print("  policy |  append rec/s |     MB/s | enqueue rec/s  | max 1000-append batch ms | fsyncs | segs")
    try:
        for policy in args.policies.split(","):
            bench_policy(base, policy, args.records, payloads, args.interval_ms)
        print("\nreplay (read 1000 + ack; fresh open)")
        print("  policy |  replay rec/s |     MB/s | open ms")
        for line in REPLAY:
            print(line)
        if args.rate:
            print(f"\npaced: {args.rate:,} records/s for {args.paced_seconds:.0f} s, appended each 1 ms tick")
            print("  policy |      rec/s | tick p50 ms | p99 ms | max ms | fsyncs")
            for policy in args.policies.split(","):
                bench_paced(base, policy, args.rate, args.paced_seconds, payloads, args.interval_ms)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
