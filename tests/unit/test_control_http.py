"""Control socket (roundtrip, 0600, bad requests) and HTTP (/health /status /metrics) against a
supervisor whose children are fake processes fed with real-shaped beats."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector.control import ControlServer, Unreachable, request
from collector.http import HttpServer
from shared import ipc
from shared.states import ProcessState
from tests.conftest import free_port
from tests.unit.test_supervisor import Rig

S = ProcessState


def now_ms() -> int:
    return int(time.time() * 1000)


def worker_stats(**over: Any) -> dict[str, Any]:
    stats = {"exchange": "binance", "events_out": 500, "drops": 0, "parse_errors": 1, "rejected": 0,
             "ws_connections": 1, "ws_reconnects": 2, "ws_stale": 0, "rest_calls": 10, "rest_errors": 1,
             "last_message_at": now_ms(), "last_event_at": now_ms(), "connection": "connected",
             "stale": False, "circuit": "CLOSED", "channel": "connected", "queued_batches": 0,
             "last_error": None}
    stats.update(over)
    return stats


def publisher_stats(**over: Any) -> dict[str, Any]:
    stats = {"streams": {"binance|trade": {"in": 500, "pushed": 480, "deduped": 15, "dropped": 5,
                                           "rate_limited": 0},
                         "binance|listing": {"in": 2, "pushed": 2, "deduped": 0, "dropped": 0,
                                             "rate_limited": 0}},
             "redis": "up", "redis_down_since": None, "redis_errors": 0, "buffered": 10,
             "buffer_limit": 1000,
             "latency": {"buckets": [[0.001, 100], [0.005, 400], [0.05, 482]], "sum": 1.25, "count": 482},
             "last_push_at": now_ms(), "listings_emitted": 2, "workers_connected": ["binance"],
             "frame_errors": 0, "errors": 0}
    stats.update(over)
    return stats


def healthy_rig(tmp_path: Path) -> Rig:
    rig = Rig(tmp_path, beat_timeout=1000.0)
    rig.sup.started_at_wall -= 3600  # past the startup grace
    rig.running("publisher")
    rig.running()
    rig.beat("publisher", **publisher_stats())
    rig.beat(**worker_stats())
    return rig


# ---------------------------------------------------------------- control socket

async def _with_control(rig: Rig, fn) -> Any:
    server = ControlServer(rig.sup.settings.control_socket, rig.sup.handle_command)
    await server.start()
    try:
        return await asyncio.to_thread(fn)
    finally:
        await server.close()


def test_control_roundtrip_mode_0600_and_commands(short_tmp: Path) -> None:
    rig = healthy_rig(short_tmp)
    settings = rig.sup.settings

    def client() -> dict[str, Any]:
        mode = stat.S_IMODE(os.stat(settings.control_socket).st_mode)
        pong = request(settings, "ping")
        status = request(settings, "status")
        bad_name = request(settings, "restart", {"name": "nope"})
        stop = request(settings, "stop", {"name": "binance"})
        return {"mode": mode, "pong": pong, "status": status, "bad_name": bad_name, "stop": stop}

    out = asyncio.run(_with_control(rig, client))
    assert out["mode"] == 0o600
    assert out["pong"]["ok"] and out["pong"]["pid"] == os.getpid()
    st = out["status"]["status"]
    assert set(st["children"]) == {"publisher", "binance"}
    assert st["children"]["binance"]["state"] == "RUNNING"
    assert st["health"]["status"] == "healthy", st["health"]
    assert not out["bad_name"]["ok"] and "valid names: publisher, binance" in out["bad_name"]["error"]
    assert out["stop"]["ok"] and out["stop"]["state"] == "STOPPING"
    assert rig.proc().signals == ["TERM"], "the command reached the supervisor"
    assert not settings.control_socket.exists(), "removed on close"


def test_control_bad_requests_get_errors_and_server_survives(short_tmp: Path) -> None:
    rig = healthy_rig(short_tmp)
    path = str(rig.sup.settings.control_socket)

    def raw(payload: bytes) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(payload)
            return ipc.recv_msg(s)

    def frame(body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + body

    def client() -> list[Any]:
        return [
            raw(frame(b"this is not json")),
            raw(ipc.encode([1, 2, 3])),
            raw(ipc.encode({"cmd": 42})),
            raw(ipc.encode({"cmd": "status", "args": "binance"})),
            raw(ipc.encode({"cmd": "reboot"})),
            raw(struct.pack(">I", 50_000_000)),  # absurd length
            request(rig.sup.settings, "ping"),
        ]

    replies = asyncio.run(_with_control(rig, client))
    for reply in replies[:-1]:
        assert reply["ok"] is False and reply["error"], reply
    assert "JSON object" in replies[1]["error"]
    assert "unknown command" in replies[4]["error"]
    assert replies[-1]["ok"] is True, "still serving after garbage"


def test_control_stale_socket_is_replaced_and_unreachable_is_reported(short_tmp: Path) -> None:
    rig = healthy_rig(short_tmp)
    settings = rig.sup.settings
    with pytest.raises(Unreachable, match="no control socket at"):
        request(settings, "ping")
    # a socket file nobody listens on (a killed collector's leftover)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(settings.control_socket))
    stale.close()
    with pytest.raises(Unreachable, match="refuses connections"):
        request(settings, "ping")
    out = asyncio.run(_with_control(rig, lambda: request(settings, "ping")))
    assert out["ok"]


def test_control_client_times_out_on_a_silent_server(short_tmp: Path) -> None:
    rig = healthy_rig(short_tmp)
    settings = rig.sup.settings
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(settings.control_socket))
    listener.listen(1)
    try:
        with pytest.raises(Unreachable, match="did not answer"):
            request(settings, "status", timeout=0.3)
    finally:
        listener.close()


# ---------------------------------------------------------------- HTTP

async def _http_get_all(rig: Rig, paths: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
    server = HttpServer(rig.sup, "127.0.0.1", free_port())
    host, port = await server.start()
    out = []
    try:
        timeout = aiohttp.ClientTimeout(total=1.0)  # the contract: answers within 1 s
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for method, path in paths:
                async with session.request(method, f"http://{host}:{port}{path}") as resp:
                    out.append((resp.status, resp.headers.get("Content-Type", ""), await resp.text()))
    finally:
        await server.close()
    return out


def test_http_health_status_metrics_and_only_get(short_tmp: Path) -> None:
    rig = healthy_rig(short_tmp)
    res = asyncio.run(_http_get_all(rig, [
        ("GET", "/health"), ("GET", "/status"), ("GET", "/metrics"),
        ("POST", "/health"), ("DELETE", "/status"), ("HEAD", "/metrics"), ("GET", "/admin"),
    ]))
    (h_code, h_type, h_body), (s_code, _, s_body), (m_code, m_type, m_body) = res[:3]
    import json

    assert h_code == 200 and "application/json" in h_type
    assert json.loads(h_body) == {**json.loads(h_body), "status": "healthy", "reasons": []}
    status = json.loads(s_body)
    assert s_code == 200 and status["children"]["binance"]["events_total"] == 500
    assert status["children"]["binance"]["parse_errors"] == 1
    assert status["children"]["binance"]["rest_errors"] == 1
    assert status["children"]["publisher"]["streams"]["binance|trade"]["deduped"] == 15
    assert status["publisher"]["redis"] == "up" and status["publisher"]["buffered"] == 10
    assert m_code == 200 and m_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(m_body)}
    assert [code for code, _, _ in res[3:6]] == [405, 405, 405]
    assert res[6][0] == 404

    def value(metric: str, **labels: str) -> float:
        for fam in families.values():
            for sample in fam.samples:
                if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        raise AssertionError(f"no sample {metric} {labels}")

    assert value("collector_events_in_total", exchange="binance", stream_class="trade") == 500
    assert value("collector_events_pushed_total", exchange="binance", stream_class="listing") == 2
    assert value("collector_events_deduped_total", exchange="binance", stream_class="trade") == 15
    assert value("collector_events_dropped_total", exchange="binance", stream_class="trade") == 5
    assert value("collector_parse_errors_total", exchange="binance") == 1
    assert value("collector_ws_reconnects_total", exchange="binance") == 2
    assert value("collector_rest_calls_total", exchange="binance") == 10
    assert value("collector_rest_errors_total", exchange="binance") == 1
    assert value("collector_channel_drops_total", exchange="binance") == 0
    assert value("collector_child_state", name="binance", state="RUNNING") == 1
    assert value("collector_child_state", name="binance", state="BACKOFF") == 0
    assert value("collector_child_restarts_total", name="binance") == 0
    assert value("collector_redis_up") == 1
    assert value("collector_publisher_buffered_events") == 10
    assert value("collector_publish_latency_seconds_bucket", le="0.005") == 400
    assert value("collector_publish_latency_seconds_bucket", le="+Inf") == 482
    assert value("collector_publish_latency_seconds_count") == 482
    assert value("collector_publish_latency_seconds_sum") == pytest.approx(1.25)


def test_http_health_degraded_names_causes_and_unhealthy_is_503(short_tmp: Path) -> None:
    import json

    rig = healthy_rig(short_tmp)
    rig.beat(**worker_stats(stale=True, last_message_at=now_ms() - 75_000, circuit="OPEN"))
    rig.beat("publisher", **publisher_stats(redis="down", redis_down_since=now_ms() - 5_000))
    (code, _, body), = asyncio.run(_http_get_all(rig, [("GET", "/health")]))
    health = json.loads(body)
    assert code == 200 and health["status"] == "degraded"
    assert any(r.startswith("binance: stale (no data for 7") for r in health["reasons"]), health
    assert "binance: circuit OPEN (REST calls suspended)" in health["reasons"]
    assert any(r.startswith("redis: down for 5s") for r in health["reasons"])

    # the publisher dies for good: nothing can reach Redis -> unhealthy, 503, and it says why
    rig.proc("publisher").exit(3)
    rig.tick()
    assert rig.child("publisher").state is S.FATAL
    (code, _, body), = asyncio.run(_http_get_all(rig, [("GET", "/health")]))
    health = json.loads(body)
    assert code == 503 and health["status"] == "unhealthy"
    assert health["reasons"][0].startswith("publisher: FATAL (configuration error")


def test_http_answers_while_a_worker_is_wedged(short_tmp: Path) -> None:
    import json

    rig = healthy_rig(short_tmp)
    rig.clock.advance(12)  # the worker stopped beating 12 s ago (its event loop is blocked)
    rig.beat("publisher", **publisher_stats())
    res = asyncio.run(_http_get_all(rig, [("GET", "/health"), ("GET", "/metrics")]))
    assert res[0][0] == 200
    assert "binance: no heartbeat for 12s (event loop blocked?)" in json.loads(res[0][2])["reasons"]
    assert res[1][0] == 200


def test_metrics_counters_carry_across_a_restart(short_tmp: Path) -> None:
    rig = healthy_rig(short_tmp)

    def scrape() -> dict[tuple, float]:
        (_, _, body), = asyncio.run(_http_get_all(rig, [("GET", "/metrics")]))
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(body) for s in fam.samples}

    before = scrape()
    rig.crash_and_restart()            # worker killed; new incarnation counts from zero
    rig.crash_and_restart("publisher")
    after_restart = scrape()
    rig.beat(**worker_stats(events_out=3, parse_errors=0, ws_reconnects=1, rest_calls=1, rest_errors=0))
    rig.beat("publisher", **publisher_stats(
        streams={"binance|trade": {"in": 3, "pushed": 3, "deduped": 0, "dropped": 0}},
        latency={"buckets": [[0.001, 3], [0.005, 3], [0.05, 3]], "sum": 0.001, "count": 3}))
    after = scrape()
    for key, old in before.items():
        name = key[0]
        if name.endswith("_total") or name.endswith("_count") or name.endswith("_bucket"):
            assert after_restart[key] >= old, key
            assert after[key] >= old, key
    assert after[("collector_ws_reconnects_total", (("exchange", "binance"),))] == 3
    assert after[("collector_events_in_total", (("exchange", "binance"), ("stream_class", "trade")))] == 503
    assert after[("collector_child_restarts_total", (("name", "binance"),))] == 1
    assert after[("collector_publish_latency_seconds_count", ())] == 485


# ---------------------------------------------------------------- health.evaluate (pure)

from collector.health import evaluate  # noqa: E402
from shared.settings import Settings  # noqa: E402

NOW = 2_000_000_000.0  # epoch seconds


def health_settings() -> Settings:
    return Settings(health={"stale_after": 60.0, "redis_unhealthy_after": 60.0})


def status_like(**workers: dict[str, Any]) -> dict[str, Any]:
    """A healthy collector started an hour ago; ``workers`` override per-worker fields."""
    children: dict[str, Any] = {
        "publisher": {"kind": "publisher", "state": "RUNNING", "uptime_s": 3600.0, "beat_age_s": 0.5,
                      "drops_60s": 0, "restarts": 0},
    }
    for name, over in (workers or {"binance": {}}).items():
        child = {"kind": "worker", "state": "RUNNING", "uptime_s": 3600.0, "beat_age_s": 0.5,
                 "stale": False, "connection": "connected", "circuit": "CLOSED",
                 "last_message_at": (NOW - 1) * 1000, "drops_60s": 0, "restarts": 0,
                 "last_error": None, "last_exit": None, "next_start_in_s": None}
        child.update(over)
        children[name] = child
    return {"started_at": NOW - 3600, "children": children,
            "publisher": {"redis": "up", "redis_down_since": None, "buffered": 0, "buffer_limit": 1000}}


def check(status: dict[str, Any], now: float = NOW) -> tuple[str, list[str]]:
    out = evaluate(status, health_settings(), now)
    return out["status"], out["reasons"]


def test_health_healthy_baseline() -> None:
    assert check(status_like(binance={}, okx={})) == ("healthy", [])


def test_health_publisher_not_running_is_unhealthy_after_the_grace() -> None:
    st = status_like()
    st["children"]["publisher"].update(state="FATAL", last_error="6 crashes within 300s")
    verdict, reasons = check(st)
    assert verdict == "unhealthy"
    assert reasons == ["publisher: FATAL (6 crashes within 300s; needs `collectorctl restart`)"]

    st = status_like()
    st["children"]["publisher"]["state"] = "STARTING"
    st["started_at"] = NOW - 3  # just started: still coming up
    assert check(st) == ("degraded", ["publisher: STARTING"])
    st["started_at"] = NOW - 30
    assert check(st) == ("unhealthy", ["publisher: STARTING"])


def test_health_no_worker_running_is_unhealthy_one_of_two_is_degraded() -> None:
    st = status_like(binance={"state": "BACKOFF", "last_exit": "exit 1", "next_start_in_s": 4.2},
                     okx={"state": "FATAL", "last_error": "configuration error (exit 3)"})
    verdict, reasons = check(st)
    assert verdict == "unhealthy"
    assert reasons == ["no exchange worker RUNNING",
                       "binance: BACKOFF (exit 1; restart in 4s)",
                       "okx: FATAL (configuration error (exit 3); needs `collectorctl restart`)"]
    st["children"]["okx"].update(state="RUNNING")
    assert check(st) == ("degraded", ["binance: BACKOFF (exit 1; restart in 4s)"])
    st["children"]["binance"].update(state="STOPPED")
    assert check(st) == ("degraded", ["binance: STOPPED"])


def test_health_no_worker_configured_is_unhealthy() -> None:
    st = status_like()
    del st["children"]["binance"]
    verdict, reasons = check(st)
    assert verdict == "unhealthy" and reasons[0].startswith("no exchange worker configured")


def test_health_stale_data_is_degraded_and_names_the_age() -> None:
    assert check(status_like(binance={"stale": True, "last_message_at": (NOW - 12) * 1000})) == \
        ("degraded", ["binance: stale (no data for 12s)"])
    assert check(status_like(binance={"last_message_at": (NOW - 61) * 1000})) == \
        ("degraded", ["binance: stale (no data for 61s)"])
    assert check(status_like(binance={"last_message_at": (NOW - 59) * 1000})) == ("healthy", [])
    # never any data: fine while young, stale once older than stale_after
    assert check(status_like(binance={"last_message_at": None, "uptime_s": 20.0})) == ("healthy", [])
    assert check(status_like(binance={"last_message_at": None, "uptime_s": 90.0})) == \
        ("degraded", ["binance: stale (no data since start)"])


def test_health_connection_circuit_and_late_beats_are_degraded() -> None:
    verdict, reasons = check(status_like(binance={"connection": "connecting", "circuit": "HALF_OPEN"},
                                         okx={"beat_age_s": 9.6}))
    assert verdict == "degraded"
    assert reasons == ["binance: connection connecting", "binance: circuit HALF_OPEN (REST calls suspended)",
                       "okx: no heartbeat for 10s (event loop blocked?)"]


def test_health_recent_drops_are_degraded() -> None:
    st = status_like(binance={"drops_60s": 12})
    st["children"]["publisher"]["drops_60s"] = 3
    verdict, reasons = check(st)
    assert verdict == "degraded"
    assert "publisher: 3 events dropped in the last 60s" in reasons
    assert "binance: 12 events dropped (channel full) in the last 60s" in reasons


def test_health_redis_down_degraded_then_unhealthy() -> None:
    st = status_like()
    st["publisher"].update(redis="down", redis_down_since=(NOW - 20) * 1000, buffered=400)
    assert check(st) == ("degraded", ["redis: down for 20s, 400 events buffered"])
    st["publisher"]["redis_down_since"] = (NOW - 61) * 1000
    assert check(st) == ("unhealthy", ["redis: down for 61s, 400 events buffered"])


def test_health_publisher_buffer_over_half_is_degraded() -> None:
    st = status_like()
    st["publisher"].update(buffered=500, buffer_limit=1000)
    assert check(st) == ("healthy", [])
    st["publisher"].update(buffered=501)
    assert check(st) == ("degraded", ["publisher: buffer 50% full (501/1000 events)"])


def test_health_unhealthy_reasons_come_first() -> None:
    st = status_like(binance={"stale": True, "last_message_at": (NOW - 100) * 1000})
    st["publisher"].update(redis="down", redis_down_since=(NOW - 300) * 1000)
    verdict, reasons = check(st)
    assert verdict == "unhealthy"
    assert reasons[0].startswith("redis: down for 300s") and reasons[1].startswith("binance: stale")


def test_listing_counters_carry_across_publisher_restarts_and_reach_metrics() -> None:
    from collector.metrics import make_registry, render
    from collector.supervisor import merge_counters

    first = {"listings_by_event": {"listing": 2, "pre_listing": 1}, "listing_snapshots_truncated": 1}
    second = {"listings_by_event": {"listing": 1, "delisting": 1}, "listing_snapshots_empty": 2}
    totals = merge_counters(merge_counters({}, first), second)
    assert totals["listings_by_event"] == {"listing": 3, "pre_listing": 1, "delisting": 1}
    assert totals["listing_snapshots_truncated"] == 1 and totals["listing_snapshots_empty"] == 2

    snap = {"children": {"publisher": {"kind": "publisher", "state": "RUNNING", "totals": totals}}, "publisher": {}}
    body, _content_type = render(make_registry(lambda: snap))
    text = body.decode()
    assert 'collector_listing_events_total{event="listing"} 3.0' in text
    assert 'collector_listing_snapshots_ignored_total{reason="empty"} 2.0' in text
