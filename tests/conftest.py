"""Shared test harness: a private redis-server per test (stop/freeze/restart), free ports,
settings for spawned processes. fakeredis is only for narrow unit tests of pure logic."""

from __future__ import annotations

import asyncio

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="run slow soak tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow soak test: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``pred`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def until(pred, timeout: float = 5.0, what: str = "condition") -> None:
    """The asyncio form of :func:`wait_until` (polls every 10 ms on the running loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def run_async(coro, timeout: float = 30.0) -> None:
    """Run ``coro`` to completion on a new loop, failing the test after ``timeout`` seconds."""
    asyncio.run(asyncio.wait_for(coro, timeout))


class RedisServer:
    """A private redis-server on a free loopback port, with AOF so a stop/start keeps data."""

    def __init__(self, workdir: Path, port: int | None = None, password: str | None = None) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server not found: install Debian's redis-server package")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.password:
            return f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, keep_data: bool = True) -> "RedisServer":
        if not keep_data:
            for f in self.workdir.glob("*"):
                if f.is_file():
                    f.unlink()
                else:
                    shutil.rmtree(f, ignore_errors=True)
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir),
            "--logfile", str(self.workdir / "redis.log"), "--daemonize", "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._pingable, timeout=10, what=f"redis-server on {self.port}")
        return self

    def _pingable(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:  # noqa: BLE001
            return False

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           decode_responses=True, socket_timeout=5)

    def stop(self) -> None:
        """Clean stop (AOF is fsynced on every write, so data survives)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis").start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            try:
                srv.thaw()
            except Exception:  # noqa: BLE001
                pass
        srv.kill()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory path (Unix socket paths are limited to ~107 bytes)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="col-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def serve_app(app) -> tuple[object, int]:
    """Start an aiohttp app on a free 127.0.0.1 port; returns (runner, port). ``await runner.cleanup()``."""
    from aiohttp import web

    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def python() -> str:
    return sys.executable


def base_env(run_dir: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """Environment for a spawned collector: clean of the caller's COLLECTOR_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env.update({
        "COLLECTOR_RUN_DIR": str(run_dir),
        "COLLECTOR_LOG_DIR": str(run_dir / "logs"),
        "COLLECTOR_REDIS__URL": redis_url,
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env
