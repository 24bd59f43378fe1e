"""Shared bits of the benchmarks: a private redis-server, process CPU/RSS sampling, percentiles."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis() -> tuple[subprocess.Popen, str, Path]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found (apt-get install redis-server)")
    work = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        try:
            if redis.Redis.from_url(url).ping():
                return proc, url, work
        except Exception:  # noqa: BLE001
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


@dataclass
class CpuSample:
    pid: int
    cpu: float
    at: float


class ProcWatch:
    """CPU% (user+sys over wall time; 100% = one core) and RSS of named processes over a window."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in procs.items()}
        self.start: dict[str, tuple[float, float]] = {}

    def begin(self) -> None:
        now = time.monotonic()
        for name, p in self.procs.items():
            t = p.cpu_times()
            self.start[name] = (t.user + t.system, now)

    def end(self) -> dict[str, dict[str, float]]:
        out = {}
        now = time.monotonic()
        for name, p in self.procs.items():
            try:
                t = p.cpu_times()
                cpu0, t0 = self.start[name]
                out[name] = {
                    "cpu_pct": 100.0 * (t.user + t.system - cpu0) / max(now - t0, 1e-9),
                    "rss_mb": p.memory_info().rss / 1e6,
                }
            except psutil.NoSuchProcess:
                out[name] = {"cpu_pct": float("nan"), "rss_mb": float("nan")}
        return out


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * (len(sorted_values) - 1)))))
    return sorted_values[k]
