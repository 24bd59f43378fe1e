"""HTTP for probes and scrapers: ``GET /health``, ``GET /status``, ``GET /metrics``. Nothing else.

Every handler reads the supervisor's in-memory state only (no IPC round trip, no Redis call), so
the endpoints answer at once even while a worker is wedged or Redis is down — the incident
report's collector hung exactly here. ``/health`` answers 200 for healthy *and* degraded (the
body says what is degraded) and 503 only when unhealthy.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import orjson
from aiohttp import web

from collector import metrics

log = logging.getLogger(__name__)


class StatusSource(Protocol):
    def status(self) -> dict[str, Any]: ...

    def metrics_snapshot(self) -> dict[str, Any]: ...


def _json(data: Any, status: int = 200) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, status=status, content_type="application/json")


def make_app(source: StatusSource) -> web.Application:
    registry = metrics.make_registry(source.metrics_snapshot)

    async def health(_request: web.Request) -> web.Response:
        st = source.status()
        verdict = st["health"]
        code = 503 if verdict["status"] == "unhealthy" else 200
        return _json({
            "status": verdict["status"],
            "reasons": verdict["reasons"],
            "node_id": st.get("node_id"),
            "uptime_s": st.get("uptime_s"),
        }, status=code)

    async def status(_request: web.Request) -> web.Response:
        return _json(source.status())

    async def metrics_view(_request: web.Request) -> web.Response:
        body, content_type = metrics.render(registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp

    app = web.Application()
    app.router.add_get("/health", health, allow_head=False)
    app.router.add_get("/status", status, allow_head=False)
    app.router.add_get("/metrics", metrics_view, allow_head=False)
    return app


class HttpServer:
    """The aiohttp server on ``host:port`` (port 0 = any free port; see :attr:`port`)."""

    def __init__(self, source: StatusSource, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._runner = web.AppRunner(make_app(source), access_log=None, handle_signals=False)

    async def start(self) -> tuple[str, int]:
        """Bind and serve; raises OSError when the address is taken."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        for addr in self._runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                self.port = int(addr[1])
                break
        log.info("HTTP listening on http://%s:%d (/health /status /metrics)", self.host, self.port)
        return self.host, self.port

    async def close(self) -> None:
        await self._runner.cleanup()
