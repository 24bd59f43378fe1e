"""Overall health from a status snapshot: healthy / degraded / unhealthy, with named reasons.

A pure function of its inputs (no I/O, no clock reads), so ``/health``, ``collectorctl status``
and tests all agree. The incident that shaped it: a collector whose data was partly stale reported
plain "unhealthy" and its HTTP endpoint hung, so nobody could tell *what* was wrong. Here every
reason names the child and the cause ("binance: stale (no data for 12s)"), ``degraded`` still
answers 200 (the service works, partly), and only a collector that cannot deliver anything is
``unhealthy`` (503).

Input (the shape of :meth:`collector.supervisor.Supervisor.status` without ``health``)::

    {"started_at": epoch_s | None,
     "children": {name: {"kind": "publisher"|"worker", "state": str, "uptime_s": float|None,
                         "beat_age_s": float|None, "stale": bool|None, "connection": str|None,
                         "circuit": str|None, "last_message_at": ms|None, "drops_60s": int,
                         "last_error": str|None, "last_exit": str|None, "restarts": int,
                         "next_start_in_s": float|None}},
     "publisher": {"redis": "up"|"down"|None, "redis_down_since": ms|None,
                   "buffered": int|None, "buffer_limit": int|None,
                   "spool": None (disabled) | {"error": str} | {"spilling": bool, "records": int,
                            "bytes": int, "max_bytes": int, "events_dropped": int,
                            "last_drop_at": ms|None, ...}}}
"""

from __future__ import annotations

from typing import Any

from shared.settings import Settings
from shared.states import CircuitState, Health, ProcessState

#: seconds after the collector starts during which a child still starting is only "degraded"
STARTUP_GRACE_S = 10.0
#: a RUNNING child whose last beat is older than this is reported (it is killed at beat_timeout)
BEAT_LATE_S = 5.0
#: publisher buffer fill ratio above which the collector is degraded
BUFFER_DEGRADED_RATIO = 0.5
#: seconds a disk-spool drop keeps the collector degraded
SPOOL_DROP_DEGRADED_S = 60.0

_RUNNING = ProcessState.RUNNING.value


def evaluate(status: dict[str, Any], settings: Settings, now: float,
             *, grace: float = STARTUP_GRACE_S) -> dict[str, Any]:
    """``{"status": "healthy"|"degraded"|"unhealthy", "reasons": [...]}``; ``now`` is epoch seconds."""
    unhealthy: list[str] = []
    degraded: list[str] = []
    started_at = status.get("started_at")
    in_grace = started_at is not None and now - started_at < grace
    children: dict[str, dict[str, Any]] = status.get("children") or {}

    # -- the publisher: without it nothing reaches Redis
    publishers = {n: c for n, c in children.items() if c.get("kind") == "publisher"}
    for name, child in publishers.items():
        state = child.get("state")
        if state != _RUNNING:
            reason = f"{name}: {state}{_why_not_running(child)}"
            if in_grace and state == ProcessState.STARTING.value:
                degraded.append(reason)
            else:
                unhealthy.append(reason)
        else:
            _check_beat(name, child, degraded)
            _check_drops(name, child, degraded, "dropped")
    _check_redis(status.get("publisher") or {}, settings, now, unhealthy, degraded)
    _check_spool(status.get("publisher") or {}, now, degraded)

    # -- workers: one per exchange
    workers = {n: c for n, c in children.items() if c.get("kind") == "worker"}
    running = [n for n, c in workers.items() if c.get("state") == _RUNNING]
    if not workers:
        unhealthy.append("no exchange worker configured (enable at least one exchange)")
    elif not running:
        reason = "no exchange worker RUNNING"
        (degraded if in_grace else unhealthy).append(reason)
    for name, child in workers.items():
        state = child.get("state")
        if state != _RUNNING:
            degraded.append(f"{name}: {state}{_why_not_running(child)}")
            continue
        _check_beat(name, child, degraded)
        _check_freshness(name, child, settings, now, degraded)
        connection = child.get("connection")
        if connection is not None and connection != "connected":
            degraded.append(f"{name}: connection {connection}")
        circuit = child.get("circuit")
        if circuit is not None and circuit != CircuitState.CLOSED.value:
            degraded.append(f"{name}: circuit {circuit} (REST calls suspended)")
        _check_drops(name, child, degraded, "dropped (channel full)")

    if unhealthy:
        verdict = Health.UNHEALTHY
    elif degraded:
        verdict = Health.DEGRADED
    else:
        verdict = Health.HEALTHY
    return {"status": verdict.value, "reasons": unhealthy + degraded}


def _why_not_running(child: dict[str, Any]) -> str:
    """A short parenthesised cause for a child that is not RUNNING."""
    state = child.get("state")
    bits: list[str] = []
    if state == ProcessState.BACKOFF.value:
        if child.get("last_exit"):
            bits.append(str(child["last_exit"]))
        nxt = child.get("next_start_in_s")
        if nxt is not None:
            bits.append(f"restart in {nxt:.0f}s")
    elif state == ProcessState.FATAL.value:
        bits.append(str(child.get("last_error") or child.get("last_exit") or "gave up"))
        bits.append("needs `collectorctl restart`")
    return f" ({'; '.join(bits)})" if bits else ""


def _check_beat(name: str, child: dict[str, Any], degraded: list[str]) -> None:
    age = child.get("beat_age_s")
    if age is not None and age > BEAT_LATE_S:
        degraded.append(f"{name}: no heartbeat for {age:.0f}s (event loop blocked?)")


def _check_freshness(name: str, child: dict[str, Any], settings: Settings, now: float,
                     degraded: list[str]) -> None:
    """Data freshness is a health signal only (the worker reconnects by itself); never a kill."""
    last_ms = child.get("last_message_at")
    if last_ms is not None:
        age: float | None = max(0.0, now - last_ms / 1000.0)
    else:
        age = None
    limit = settings.health.stale_after
    if age is not None and (age > limit or child.get("stale")):
        degraded.append(f"{name}: stale (no data for {age:.0f}s)")
    elif age is None:
        uptime = child.get("uptime_s")
        if child.get("stale") or (uptime is not None and uptime > limit):
            degraded.append(f"{name}: stale (no data since start)")
    elif child.get("stale"):
        degraded.append(f"{name}: stale")


def _check_drops(name: str, child: dict[str, Any], degraded: list[str], what: str) -> None:
    drops = child.get("drops_60s") or 0
    if drops > 0:
        degraded.append(f"{name}: {drops} events {what} in the last 60s")


def _check_redis(pub: dict[str, Any], settings: Settings, now: float,
                 unhealthy: list[str], degraded: list[str]) -> None:
    if pub.get("redis") == "down":
        since = pub.get("redis_down_since")
        down_for = max(0.0, now - since / 1000.0) if since is not None else 0.0
        buffered = pub.get("buffered")
        extra = f", {buffered} events buffered" if buffered is not None else ""
        reason = f"redis: down for {down_for:.0f}s{extra}"
        if down_for > settings.health.redis_unhealthy_after:
            unhealthy.append(reason)
        else:
            degraded.append(reason)
    buffered, limit = pub.get("buffered"), pub.get("buffer_limit")
    if buffered is not None and limit and buffered / limit > BUFFER_DEGRADED_RATIO:
        degraded.append(f"publisher: buffer {100 * buffered / limit:.0f}% full ({buffered}/{limit} events)")


def _check_spool(pub: dict[str, Any], now: float, degraded: list[str]) -> None:
    """Degraded while events go to the disk spool, after recent spool drops, or when the spool
    could not be opened (a long Redis outage then holds the workers back instead)."""
    spool = pub.get("spool")
    if not isinstance(spool, dict):
        return
    if spool.get("error"):
        degraded.append(f"spool: unavailable ({str(spool['error'])[:200]})")
        return
    if spool.get("spilling"):
        degraded.append(f"spool: spilling to disk ({_int(spool.get('records'))} records, "
                        f"{_int(spool.get('bytes')) / 2 ** 20:.1f} of {_int(spool.get('max_bytes')) / 2 ** 20:.0f} MiB)")
    dropped = _int(spool.get("events_dropped"))
    last = spool.get("last_drop_at")
    if dropped and isinstance(last, (int, float)) and now - last / 1000.0 < SPOOL_DROP_DEGRADED_S:
        degraded.append(f"spool: {dropped} events dropped (spool full or failing; last "
                        f"{max(0.0, now - last / 1000.0):.0f}s ago)")


def _int(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0
