"""`collector demo`: the main job, offline, in one command.

Starts a private redis-server (installing Debian's package when run as root and none is
installed), the exchange simulator and the collector against it; then lists a new symbol
(pre-trading, then trading) and streams trades, and shows what reached Redis and
`collectorctl status`. Everything it starts is stopped at the end (``--keep`` keeps it running
until Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m" if sys.stdout.isatty() else f"==> {msg}", flush=True)


def _redis_ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except Exception:  # noqa: BLE001
        return False


def _ensure_redis(workdir: Path) -> tuple[str, subprocess.Popen | None]:
    """A Redis URL for the demo and the private server process (None when reusing one)."""
    binary = shutil.which("redis-server")
    if binary is None and os.geteuid() == 0 and shutil.which("apt-get"):
        _say("redis-server is not installed: installing Debian's redis-server package")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        binary = shutil.which("redis-server")
    if binary is not None:
        port = _free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(100):
            if _redis_ping(url):
                _say(f"started a private redis-server on 127.0.0.1:{port} (data discarded at the end)")
                return url, proc
            time.sleep(0.05)
        proc.kill()
        raise SystemExit("the private redis-server did not start; see " + str(workdir / "redis.log"))
    url = "redis://127.0.0.1:6379/15"
    if _redis_ping(url):
        import redis

        if redis.Redis.from_url(url).dbsize() == 0:
            _say("no redis-server binary; using the Redis on 127.0.0.1:6379, database 15 (empty)")
            return url, None
    raise SystemExit(
        "The demo needs Redis. Install it with:  sudo apt-get install redis-server\n"
        "(or run `make demo` as root, which installs it)"
    )


def demo_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="collector demo", description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    ap.add_argument("--seconds", type=float, default=4.0, help="how long trades stream before the summary")
    args = ap.parse_args(argv)

    import redis

    from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process

    work = Path(tempfile.mkdtemp(prefix="collector-demo-"))
    redis_url, redis_proc = _ensure_redis(work)
    sim_proc, sim_url = start_simulator_process()
    sim = SimulatorClient(sim_url)
    _say(f"exchange simulator (Binance REST + WebSocket) on {sim_url}")
    http_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env.update({
        "COLLECTOR_NODE_ID": "DEMO",
        "COLLECTOR_RUN_DIR": str(work / "run"),
        "COLLECTOR_LOG_DIR": str(work / "logs"),
        "COLLECTOR_REDIS__URL": redis_url,
        "COLLECTOR_HTTP__PORT": str(http_port),
        "COLLECTOR_EXCHANGES__BINANCE__REST_URL": sim_url,
        "COLLECTOR_EXCHANGES__BINANCE__WS_URL": sim.ws_url,
        "COLLECTOR_EXCHANGES__BINANCE__SYMBOLS": '["BTC-USDT","ETH-USDT"]',
        "COLLECTOR_EXCHANGES__BINANCE__POLL_INTERVAL": "1",
        "COLLECTOR_PUBLISHER__HEARTBEAT_INTERVAL": "2",
    })
    collector = subprocess.Popen([sys.executable, "-m", "collector", "run"], env=env,
                                 stdout=open(work / "collector.out", "wb"), stderr=subprocess.STDOUT)
    r = redis.Redis.from_url(redis_url, decode_responses=True)

    def ctl(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "import sys; from collector.cli import collectorctl_main;"
                               " sys.exit(collectorctl_main())", *a], env=env, capture_output=True, text=True)

    try:
        _say(f"collector started (pid {collector.pid}); logs in {work / 'logs'}; HTTP on 127.0.0.1:{http_port}")
        deadline = time.monotonic() + 30
        while ctl("status").returncode != 0:
            if collector.poll() is not None or time.monotonic() > deadline:
                print((work / "collector.out").read_text()[-3000:])
                raise SystemExit("the collector did not come up")
            time.sleep(0.3)
        while not r.exists("known:pairs:binance") and time.monotonic() < deadline:
            time.sleep(0.2)
        _say("all processes RUNNING; first exchangeInfo snapshot seeded silently")

        sim.set_trade_rate(20, "BTCUSDT")
        sim.set_trade_rate(10, "ETHUSDT")
        _say("simulator: DEMOUSDT appears, not yet trading (status BREAK)")
        sim.add_symbol("DEMOUSDT", "DEMO", "USDT", status="BREAK")
        time.sleep(2.5)
        _say("simulator: DEMOUSDT opens for trading (status TRADING)")
        sim.set_symbol_status("DEMOUSDT", "TRADING")
        time.sleep(max(2.5, args.seconds))

        _say("events:raw (listing lifecycle, Node A format):")
        for entry_id, f in r.xrange("events:raw"):
            print(f"  {entry_id}  event={f['event']:<12} symbol={f['symbol']:<6} pair={f['pair']:<10} "
                  f"status={f['status']:<12} source={f['source']}  url={f['url']}")
        for stream in ("md:trade:binance:spot:BTC-USDT", "md:trade:binance:spot:ETH-USDT"):
            n = r.xlen(stream)
            _say(f"{stream}: {n} trades; the last two:")
            for entry_id, f in r.xrevrange(stream, count=2):
                print(f"  {entry_id}  id={f['trade_id']} {f['side']:<4} {f['qty']} @ {f['price']} "
                      f"(exchange ts {f['ts_exchange']}, received {f['ts_receive']})")
        _say("collectorctl status:")
        print(ctl("status").stdout, end="")
        hb = r.hgetall("node:heartbeat:DEMO")
        _say(f"heartbeat node:heartbeat:DEMO: status={hb.get('status')} uptime={hb.get('uptime_seconds')}s")
        if args.keep:
            _say(f"running; try: COLLECTOR_RUN_DIR={work / 'run'} COLLECTOR_NODE_ID=DEMO collectorctl status"
                 f"   |  curl 127.0.0.1:{http_port}/health   |  Ctrl-C to stop")
            try:
                while collector.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        if collector.poll() is None:
            collector.send_signal(signal.SIGTERM)
            try:
                code = collector.wait(45)
                _say(f"collector stopped gracefully (exit {code})")
            except subprocess.TimeoutExpired:
                collector.kill()
        stop_simulator_process(sim_proc)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
