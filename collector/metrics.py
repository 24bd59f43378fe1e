"""Prometheus exposition of the supervisor's in-memory view (``GET /metrics``).

A custom collector on a private registry turns one snapshot (``Supervisor.metrics_snapshot()``)
into metric families at scrape time: no shared global registry, no per-event instrumentation in
the parent, and nothing that can block (the data is already in memory). Counters come from the
children's beats plus what their earlier incarnations had counted, so they never go backwards
across a restart.

Snapshot shape::

    {"children": {name: {"kind": "publisher"|"worker", "state": str, "total_restarts": int,
                         "recycles": int, "hung_kills": int, "rss_bytes": int|None, "fds": int|None,
                         "totals": {counter: number, "streams": {...}, "latency": {...}}}},
     "publisher": {"redis": "up"|"down"|None, "buffered": int|None, "spool": dict|None}}
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from shared.states import ProcessState

Snapshot = dict[str, Any]

#: publisher per-stream counters: stats key -> metric name
STREAM_COUNTERS = {
    "in": ("collector_events_in", "Events received from workers"),
    "pushed": ("collector_events_pushed", "Events acknowledged by Redis (XADD)"),
    "deduped": ("collector_events_deduped", "Events dropped as duplicates within the dedup window"),
    "dropped": ("collector_events_dropped", "Events dropped by the publisher (disk spool full or failing)"),
}

#: worker counters: stats key -> metric name
WORKER_COUNTERS = {
    "drops": ("collector_channel_drops", "Events a worker dropped because its channel to the publisher was full"),
    "parse_errors": ("collector_parse_errors", "Malformed exchange frames"),
    "rejected": ("collector_rejected_symbols", "Events rejected for hostile or invalid symbols"),
    "ws_reconnects": ("collector_ws_reconnects", "WebSocket reconnects"),
    "ws_stale": ("collector_ws_stale_reconnects", "Reconnects triggered by the stale-stream watchdog"),
    "rest_calls": ("collector_rest_calls", "REST calls made"),
    "rest_errors": ("collector_rest_errors", "REST calls that failed"),
    "push_updates": ("collector_listing_push_updates", "Instrument updates received on listing push channels"),
}


class SupervisorCollector(Collector):
    """Builds every metric family from one snapshot per scrape."""

    def __init__(self, snapshot_fn: Callable[[], Snapshot]) -> None:
        self._snapshot_fn = snapshot_fn

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot_fn()
        children: dict[str, dict[str, Any]] = snap.get("children") or {}
        yield from _stream_families(children)
        yield from _worker_families(children)
        yield from _child_families(children)
        yield from _publisher_families(snap.get("publisher") or {}, children)
        yield from _listing_families(children)
        yield from _spool_families(snap.get("publisher") or {}, children)


def _listing_families(children: dict[str, dict[str, Any]]) -> Iterable[Metric]:
    events = CounterMetricFamily("collector_listing_events", "Listing lifecycle events written to events:raw",
                                 labels=["event"])
    ignored = CounterMetricFamily("collector_listing_snapshots_ignored",
                                  "Instrument snapshots not trusted for delistings (an outage, not a delisting wave)",
                                  labels=["reason"])
    for child in children.values():
        if child.get("kind") != "publisher":
            continue
        totals = child.get("totals") or {}
        for event, n in sorted((totals.get("listings_by_event") or {}).items()):
            events.add_metric([str(event)], _num(n))
        ignored.add_metric(["truncated"], _num(totals.get("listing_snapshots_truncated")))
        ignored.add_metric(["empty"], _num(totals.get("listing_snapshots_empty")))
    yield events
    yield ignored


#: disk spool counters carried across publisher restarts (publisher totals) -> metric name
SPOOL_COUNTERS = {
    "spool_dropped_events": ("collector_spool_dropped_events",
                             "Events dropped because the disk spool was full or failing"),
    "spool_corrupt_records": ("collector_spool_corrupt_records",
                              "Torn or corrupt disk spool records found (and skipped)"),
    "spool_write_errors": ("collector_spool_write_errors", "Disk spool write, fsync or cursor errors"),
}
#: disk spool gauges: key in the publisher's spool stats -> metric name
SPOOL_GAUGES = {
    "records": ("collector_spool_records", "Records in the disk spool not yet replayed to Redis"),
    "bytes": ("collector_spool_bytes", "Bytes used by the disk spool (on disk plus queued)"),
    "segments": ("collector_spool_segments", "Segment files of the disk spool"),
    "max_bytes": ("collector_spool_max_bytes", "Size bound of the disk spool"),
}


def _spool_families(pub: dict[str, Any], children: dict[str, dict[str, Any]]) -> Iterable[Metric]:
    spool = pub.get("spool") if isinstance(pub.get("spool"), dict) else None
    open_ok = spool is not None and not spool.get("error")
    for key, (name, doc) in SPOOL_GAUGES.items():
        g = GaugeMetricFamily(name, doc)
        g.add_metric([], _num(spool.get(key)) if open_ok and spool is not None else 0.0)
        yield g
    spilling = GaugeMetricFamily("collector_spool_spilling",
                                 "1 while the publisher sends events to the disk spool (Redis down)")
    spilling.add_metric([], 1.0 if open_ok and spool is not None and spool.get("spilling") else 0.0)
    yield spilling
    available = GaugeMetricFamily("collector_spool_available", "1 when the disk spool is open")
    available.add_metric([], 1.0 if open_ok else 0.0)
    yield available
    totals: dict[str, Any] = {}
    for child in children.values():
        if child.get("kind") == "publisher":
            totals = child.get("totals") or {}
            break
    for key, (name, doc) in SPOOL_COUNTERS.items():
        c = CounterMetricFamily(name, doc)
        c.add_metric([], _num(totals.get(key)))
        yield c


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


def _stream_families(children: dict[str, dict[str, Any]]) -> Iterable[Metric]:
    families = {
        key: CounterMetricFamily(name, doc, labels=["exchange", "stream_class"])
        for key, (name, doc) in STREAM_COUNTERS.items()
    }
    for child in children.values():
        if child.get("kind") != "publisher":
            continue
        streams = (child.get("totals") or {}).get("streams") or {}
        for stream_id, counts in sorted(streams.items()):
            exchange, _, stream_class = str(stream_id).partition("|")
            for key, fam in families.items():
                fam.add_metric([exchange, stream_class or "unknown"], _num(counts.get(key)))
    yield from families.values()


def _worker_families(children: dict[str, dict[str, Any]]) -> Iterable[Metric]:
    families = {
        key: CounterMetricFamily(name, doc, labels=["exchange"])
        for key, (name, doc) in WORKER_COUNTERS.items()
    }
    for name, child in sorted(children.items()):
        if child.get("kind") != "worker":
            continue
        totals = child.get("totals") or {}
        for key, fam in families.items():
            fam.add_metric([name], _num(totals.get(key)))
    yield from families.values()


def _child_families(children: dict[str, dict[str, Any]]) -> Iterable[Metric]:
    restarts = CounterMetricFamily("collector_child_restarts", "Crash restarts of a child process", labels=["name"])
    recycles = CounterMetricFamily(
        "collector_child_recycles", "Planned replacements of a child over a resource limit", labels=["name"])
    hung = CounterMetricFamily(
        "collector_child_hung_kills", "Children killed (after a stack dump) for a blocked event loop", labels=["name"])
    state = GaugeMetricFamily("collector_child_state", "1 for the child's current state", labels=["name", "state"])
    rss = GaugeMetricFamily("collector_child_rss_bytes", "Resident memory of a child process", labels=["name"])
    fds = GaugeMetricFamily("collector_child_open_fds", "Open file descriptors of a child process", labels=["name"])
    for name, child in sorted(children.items()):
        restarts.add_metric([name], _num(child.get("total_restarts")))
        recycles.add_metric([name], _num(child.get("recycles")))
        hung.add_metric([name], _num(child.get("hung_kills")))
        current = child.get("state")
        for st in ProcessState:
            state.add_metric([name, st.value], 1.0 if st.value == current else 0.0)
        if child.get("rss_bytes") is not None:
            rss.add_metric([name], _num(child["rss_bytes"]))
        if child.get("fds") is not None:
            fds.add_metric([name], _num(child["fds"]))
    yield from (restarts, recycles, hung, state, rss, fds)


def _publisher_families(pub: dict[str, Any], children: dict[str, dict[str, Any]]) -> Iterable[Metric]:
    redis_up = GaugeMetricFamily("collector_redis_up", "1 when the publisher's Redis connection is up")
    redis_up.add_metric([], 1.0 if pub.get("redis") == "up" else 0.0)
    yield redis_up
    buffered = GaugeMetricFamily("collector_publisher_buffered_events", "Events held by the publisher for Redis")
    buffered.add_metric([], _num(pub.get("buffered")))
    yield buffered
    latency = None
    for child in children.values():
        if child.get("kind") == "publisher":
            latency = (child.get("totals") or {}).get("latency")
            break
    hist = HistogramMetricFamily(
        "collector_publish_latency_seconds",
        "Frame receipt in a worker to XADD acknowledgement by Redis",
    )
    buckets, total_sum, count = _histogram(latency)
    hist.add_metric([], buckets, total_sum)
    yield hist


def _histogram(latency: Any) -> tuple[list[tuple[str, float]], float, float]:
    """Prometheus buckets (cumulative, ending with +Inf) from the publisher's latency stats."""
    if not isinstance(latency, dict):
        return [("+Inf", 0.0)], 0.0, 0.0
    count = _num(latency.get("count"))
    out: list[tuple[str, float]] = []
    for pair in latency.get("buckets") or []:
        try:
            le, cum = float(pair[0]), _num(pair[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isinf(le) or math.isnan(le):
            continue
        out.append((_fmt_le(le), cum))
    out.sort(key=lambda b: float(b[0]))
    out.append(("+Inf", count))
    return out, _num(latency.get("sum")), count


def _fmt_le(le: float) -> str:
    return repr(float(le))


def make_registry(snapshot_fn: Callable[[], Snapshot]) -> CollectorRegistry:
    """A private registry holding only the supervisor's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(snapshot_fn))
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """(body, content type) in the Prometheus text format."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
