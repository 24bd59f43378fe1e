"""Listing detection in the publisher: instrument snapshots -> listing lifecycle events + state.

Workers send ``instruments`` messages (a full snapshot of one exchange market, or a partial update).
The known state lives in Redis so that a restart neither floods nor forgets:

- ``known:pairs:{exchange}``   HASH  field ``{market}:{native_symbol}`` -> normalized status;
- ``known:untraded:{exchange}`` SET  of ``{market}:{native_symbol}`` first seen not trading and not
  trading since, so that its first move to ``trading`` is announced as a ``listing`` (and a halted
  pair that resumes is only a ``status_change``).

Rules (per exchange + market):
- the first full snapshot with no state for that market seeds silently (state only, no events);
- an empty full snapshot is an outage: ignored, never seeds, never removes;
- a partial update for a market that was never seeded is ignored (seeding needs a full snapshot);
- a native symbol not in the state -> ``listing`` if trading, else ``pre_listing`` (a new symbol
  already ``delisted`` is recorded silently: announcing a dead pair would be a false alert);
- a known symbol moving to ``trading`` -> ``listing`` if it never traded, else ``status_change``;
  any other status change -> ``status_change``;
- a symbol missing from a snapshot -> no event, state kept (delisting needs confirmation logic).

Each event is written together with its state change in one MULTI/EXEC by the publisher (see
:func:`update_commands`), so a crash can neither double-announce nor forget. This module keeps the
in-memory copy of the state (loaded once per exchange) and, while Redis is unreachable, only the
latest full snapshot per exchange + market plus a bounded list of partial updates.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from shared.events import (
    DELISTED, EV_LISTING, EV_PRE_LISTING, EV_STATUS_CHANGE, PRE_TRADING, STATUSES, TRADING,
    WireEvent, listing_event,
)
from shared.symbols import NAME_RE, is_safe_native_symbol

log = logging.getLogger(__name__)

_INFO_KEYS = ("symbol", "base", "quote", "market", "status", "raw_status", "url")
#: longest string accepted in an instrument's info (url, raw_status ...)
_MAX_INFO_LEN = 512


def pairs_key(exchange: str) -> str:
    return f"known:pairs:{exchange}"


def untraded_key(exchange: str) -> str:
    return f"known:untraded:{exchange}"


def state_field(market: str, native_symbol: str) -> str:
    return f"{market}:{native_symbol}"


class InstrumentsError(ValueError):
    """The ``instruments`` message is malformed as a whole (the sender's connection is closed)."""


@dataclass(slots=True)
class InstrumentsMsg:
    exchange: str
    market: str
    full: bool
    source: str
    detected_at: int
    instruments: dict[str, dict[str, str]]
    #: instruments skipped because their entry was malformed
    invalid: int = 0


def parse_instruments_msg(msg: dict[str, Any]) -> InstrumentsMsg:
    """Validate an ``instruments`` message. Malformed entries are skipped and counted in ``invalid``;
    a malformed envelope raises InstrumentsError."""
    exchange, market = msg.get("exchange"), msg.get("market")
    if not isinstance(exchange, str) or not NAME_RE.match(exchange):
        raise InstrumentsError("instruments: bad exchange")
    if not isinstance(market, str) or not NAME_RE.match(market):
        raise InstrumentsError("instruments: bad market")
    full = msg.get("full")
    source = msg.get("source")
    detected_at = msg.get("detected_at")
    raw = msg.get("instruments")
    if not isinstance(full, bool):
        raise InstrumentsError("instruments: 'full' must be a boolean")
    if not isinstance(source, str) or not 0 < len(source) <= 64:
        raise InstrumentsError("instruments: bad source")
    if type(detected_at) is not int or detected_at < 0:
        raise InstrumentsError("instruments: 'detected_at' must be integer milliseconds")
    if not isinstance(raw, dict):
        raise InstrumentsError("instruments: 'instruments' must be an object")
    good: dict[str, dict[str, str]] = {}
    invalid = 0
    for native, info in raw.items():
        if not is_safe_native_symbol(native) or not isinstance(info, dict):
            invalid += 1
            continue
        vals = [info.get(k) for k in _INFO_KEYS]
        if not all(isinstance(v, str) and len(v) <= _MAX_INFO_LEN for v in vals) or info["status"] not in STATUSES:
            invalid += 1
            continue
        if info["market"] != market:
            invalid += 1
            continue
        good[native] = {k: info[k] for k in _INFO_KEYS}
    return InstrumentsMsg(exchange, market, full, source, detected_at, good, invalid)


@dataclass(slots=True)
class ListingUpdate:
    """One atomic unit: at most one listing event plus the state change that goes with it."""

    exchange: str
    market: str
    event: WireEvent | None = None
    #: state fields to set: ``{market}:{native}`` -> status
    set_status: dict[str, str] = field(default_factory=dict)
    untraded_add: list[str] = field(default_factory=list)
    untraded_remove: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Change:
    """A decided change for one symbol (the pure diff's output)."""

    native_symbol: str
    info: dict[str, str]
    event: str | None          # EV_* or None (state only)
    previous_status: str | None
    untraded: bool | None      # True: add to untraded, False: remove, None: leave


def diff_instruments(
    known: dict[str, str], untraded: set[str], instruments: dict[str, dict[str, str]],
) -> list[Change]:
    """Changes implied by ``instruments`` against ``known`` (native -> status) and ``untraded``
    (natives never seen trading), for a market already seeded. Missing symbols produce nothing."""
    out: list[Change] = []
    for native, info in instruments.items():
        status = info["status"]
        old = known.get(native)
        if old is None:
            if status == TRADING:
                out.append(Change(native, info, EV_LISTING, None, None))
            elif status == DELISTED:
                out.append(Change(native, info, None, None, None))
            else:
                out.append(Change(native, info, EV_PRE_LISTING, None, True))
        elif old != status:
            if status == TRADING:
                if native in untraded:
                    out.append(Change(native, info, EV_LISTING, old, False))
                else:
                    out.append(Change(native, info, EV_STATUS_CHANGE, old, None))
            else:
                out.append(Change(native, info, EV_STATUS_CHANGE, old, None))
    return out


def seed_changes(instruments: dict[str, dict[str, str]]) -> list[Change]:
    """The silent baseline: every instrument recorded, pre-trading ones marked untraded."""
    return [
        Change(native, info, None, None, True if info["status"] == PRE_TRADING else None)
        for native, info in instruments.items()
    ]


class _ExchangeState:
    """In-memory copy of one exchange's Redis state."""

    __slots__ = ("by_market", "untraded")

    def __init__(self, fields: dict[str, str], untraded_members: set[str]) -> None:
        self.by_market: dict[str, dict[str, str]] = {}
        self.untraded: dict[str, set[str]] = {}
        for f, status in fields.items():
            market, sep, native = f.partition(":")
            if sep:
                self.by_market.setdefault(market, {})[native] = status
        for m in untraded_members:
            market, sep, native = m.partition(":")
            if sep:
                self.untraded.setdefault(market, set()).add(native)


class _Inbox:
    __slots__ = ("full", "partials")

    def __init__(self, max_partials: int) -> None:
        self.full: InstrumentsMsg | None = None
        self.partials: deque[InstrumentsMsg] = deque(maxlen=max_partials)


StateLoader = Callable[[str], Awaitable[tuple[dict[str, str], set[str]]]]


class ListingTracker:
    """Turns ``instruments`` messages into :class:`ListingUpdate` units.

    ``submit`` only queues (latest full snapshot per exchange + market, bounded partials), so a
    Redis outage holds at most one snapshot per market. ``process`` loads an exchange's state once
    (through ``load_state``, which raises while Redis is down: that exchange's inbox is then kept),
    diffs, updates the in-memory copy and returns the updates in order.
    """

    def __init__(self, node_id: str, *, max_partials: int = 256) -> None:
        self.node_id = node_id
        self.max_partials = max_partials
        self._state: dict[str, _ExchangeState] = {}
        self._inbox: dict[tuple[str, str], _Inbox] = {}
        # counters (exposed by the publisher's log/stats)
        self.snapshots = 0
        self.ignored_empty = 0
        self.ignored_unseeded = 0
        self.invalid_instruments = 0
        self.partials_dropped = 0
        self.seeded: list[tuple[str, str]] = []

    # ---- queueing ----
    def submit(self, msg: InstrumentsMsg) -> None:
        self.invalid_instruments += msg.invalid
        if msg.full and not msg.instruments:
            self.ignored_empty += 1
            log.warning("%s %s: empty instruments snapshot ignored (treated as an outage)", msg.exchange, msg.market)
            return
        box = self._inbox.get((msg.exchange, msg.market))
        if box is None:
            box = self._inbox[(msg.exchange, msg.market)] = _Inbox(self.max_partials)
        if msg.full:
            box.full = msg
            box.partials.clear()  # superseded by the newer full snapshot
        elif msg.instruments:
            if len(box.partials) == box.partials.maxlen:
                self.partials_dropped += 1
            box.partials.append(msg)

    def has_pending(self) -> bool:
        return any(b.full is not None or b.partials for b in self._inbox.values())

    def pending_count(self) -> int:
        return sum((b.full is not None) + len(b.partials) for b in self._inbox.values())

    def invalidate(self, exchange: str) -> None:
        """Forget the in-memory state (reload from Redis before the next diff), e.g. after a failed write."""
        self._state.pop(exchange, None)

    # ---- processing ----
    async def process(self, load_state: StateLoader) -> tuple[list[ListingUpdate], Exception | None]:
        """Process every queued message whose exchange state is (or can be) loaded.

        Returns the updates in order and the first ``load_state`` error, if any; messages of an
        exchange whose state could not be loaded stay queued for the next call.
        """
        updates: list[ListingUpdate] = []
        error: Exception | None = None
        failed: set[str] = set()
        for key in list(self._inbox):
            box = self._inbox.get(key)
            if box is None or (box.full is None and not box.partials):
                continue
            exchange, market = key
            if exchange in failed:
                continue
            state = self._state.get(exchange)
            if state is None:
                try:
                    fields, untraded = await load_state(exchange)
                except Exception as exc:  # noqa: BLE001 - typically RedisUnavailable; retried later
                    failed.add(exchange)
                    error = error or exc
                    continue
                state = self._state[exchange] = _ExchangeState(fields, untraded)
                log.info("%s: loaded %d known pairs from Redis", exchange, len(fields))
            while box.full is not None or box.partials:
                if box.full is not None:
                    msg, box.full = box.full, None
                else:
                    msg = box.partials.popleft()
                updates.extend(self._apply(state, msg))
        return updates, error

    def _apply(self, state: _ExchangeState, msg: InstrumentsMsg) -> list[ListingUpdate]:
        self.snapshots += 1
        known = state.by_market.get(msg.market)
        untraded = state.untraded.setdefault(msg.market, set())
        if not known:
            if not msg.full:
                self.ignored_unseeded += 1
                log.info("%s %s: partial update before any full snapshot ignored", msg.exchange, msg.market)
                return []
            known = state.by_market.setdefault(msg.market, {})
            changes = seed_changes(msg.instruments)
            self.seeded.append((msg.exchange, msg.market))
            log.info("%s %s: first snapshot, %d pairs recorded silently", msg.exchange, msg.market, len(changes))
            upd = ListingUpdate(msg.exchange, msg.market)
            for ch in changes:
                self._record(known, untraded, msg.market, ch, upd)
            return [upd] if changes else []
        out: list[ListingUpdate] = []
        for ch in diff_instruments(known, untraded, msg.instruments):
            upd = ListingUpdate(msg.exchange, msg.market)
            if ch.event is not None:
                upd.event = listing_event(
                    exchange=msg.exchange, native_symbol=ch.native_symbol, info=ch.info, event=ch.event,
                    source=msg.source, detected_at=msg.detected_at, node_id=self.node_id,
                    previous_status=ch.previous_status,
                )
                log.info("%s %s %s: %s (%s -> %s)", msg.exchange, msg.market, ch.native_symbol, ch.event,
                         ch.previous_status, ch.info["status"])
            self._record(known, untraded, msg.market, ch, upd)
            out.append(upd)
        return out

    @staticmethod
    def _record(known: dict[str, str], untraded: set[str], market: str, ch: Change, upd: ListingUpdate) -> None:
        f = state_field(market, ch.native_symbol)
        known[ch.native_symbol] = ch.info["status"]
        upd.set_status[f] = ch.info["status"]
        if ch.untraded is True:
            untraded.add(ch.native_symbol)
            upd.untraded_add.append(f)
        elif ch.untraded is False:
            untraded.discard(ch.native_symbol)
            upd.untraded_remove.append(f)


def state_commands(upd: ListingUpdate) -> list[tuple]:
    """The Redis commands that record ``upd``'s state (to go in the same MULTI/EXEC as its event)."""
    cmds: list[tuple] = []
    if upd.set_status:
        flat: list[str] = []
        for f, s in upd.set_status.items():
            flat.append(f)
            flat.append(s)
        cmds.append(("HSET", pairs_key(upd.exchange), *flat))
    if upd.untraded_add:
        cmds.append(("SADD", untraded_key(upd.exchange), *upd.untraded_add))
    if upd.untraded_remove:
        cmds.append(("SREM", untraded_key(upd.exchange), *upd.untraded_remove))
    return cmds


def decode_state(hash_reply: Any, set_reply: Any) -> tuple[dict[str, str], set[str]]:
    """HGETALL + SMEMBERS replies (hiredis: lists of bytes) -> (fields, members)."""
    if isinstance(hash_reply, Exception):
        raise hash_reply
    if isinstance(set_reply, Exception):
        raise set_reply
    fields: dict[str, str] = {}
    it = iter(hash_reply or [])
    for k, v in zip(it, it):
        fields[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
    members = {m.decode("utf-8", "replace") for m in (set_reply or [])}
    return fields, members
