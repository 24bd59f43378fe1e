"""Listing detection in the publisher: instrument snapshots -> listing lifecycle events + state.

Workers send ``instruments`` messages (a full snapshot of one exchange market, or a partial update
from a push channel). The known state lives in Redis so that a restart neither floods nor forgets:

- ``known:pairs:{exchange}``    HASH field ``{market}:{native_symbol}`` -> normalized status
  (pre_trading | trading | halted | delisted);
- ``known:untraded:{exchange}`` SET  of ``{market}:{native_symbol}`` first seen not trading and not
  trading since, so that its first move to ``trading`` is announced as a ``listing`` (and a halted
  pair that resumes is only a ``status_change``);
- ``known:info:{exchange}``     HASH field ``{market}:{native_symbol}`` -> JSON ``[pair, base, quote,
  url]``, so that a symbol that *disappears* can still be announced as a ``delisting`` with its
  names, also after a restart.

Rules (per exchange + market):
- the first full snapshot with no state for that market seeds silently (state only, no events);
- an empty full snapshot is an outage: ignored, never seeds, never removes;
- a partial update for a market that was never seeded is ignored (seeding needs a full snapshot);
- a native symbol not in the state -> ``listing`` if trading, else ``pre_listing`` (a new symbol
  already ``delisted`` is recorded silently: announcing a dead pair would be a false alert);
- a known symbol that changes status: to ``trading`` -> ``listing`` if it never traded, else
  ``status_change``; to ``delisted`` -> ``delisting``; anything else -> ``status_change``;
- a ``delisted`` symbol that comes back: ``listing`` if trading (a relisting), else ``pre_listing``
  (previous_status ``delisted`` in both);
- push beats a lagging poll: a symbol whose status a partial (push) update *changed* less than
  ``push_grace_ms`` before a full snapshot was taken keeps the pushed status (a disagreeing poll row
  is ignored and counted in ``push_overrides``); if the push was the first sight of it, it is not
  counted missing either (REST lists can lag the push channel by seconds; a new listing pushed at
  once must not look like a delisting). After the grace the poll is the truth again, so a wrong or
  missed push is corrected within it;
- a known, not-delisted symbol missing from a *full* snapshot counts a miss; after
  ``delist_confirm_polls`` consecutive misses it becomes ``delisted`` with a ``delisting`` event.
  Appearing again (in any snapshot or update) resets its count. Partial updates never count misses.
- truncation guard: a full snapshot missing more than ``delist_max_fraction`` of the market's
  known, not-delisted symbols (and more than one) is treated as truncated: no miss is counted
  (the symbols it does carry are still diffed). Counted, and logged once per run of such lists.

Miss counts live in memory only: a restart starts them from zero, which can delay a delisting by
up to ``delist_confirm_polls`` polls but never invents one (the safe direction).

Each event is written together with its state change in one MULTI/EXEC by the publisher (see
:func:`state_commands`), so a crash can neither double-announce nor forget. This module keeps the
in-memory copy of the state (loaded once per exchange) and, while Redis is unreachable, only the
latest full snapshot per exchange + market plus a bounded list of partial updates.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Container, Mapping

import orjson

from shared.events import (
    DELISTED, EV_DELISTING, EV_LISTING, EV_PRE_LISTING, EV_STATUS_CHANGE, PRE_TRADING, STATUSES, TRADING,
    WireEvent, listing_event,
)
from shared.exchanges import format_score_weight, format_tier, resolve_score_weight, resolve_tier
from shared.symbols import NAME_RE, is_safe_native_symbol

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

_INFO_KEYS = ("symbol", "base", "quote", "market", "status", "raw_status", "url")
#: pushed statuses remembered per exchange + market (for the push grace), oldest forgotten first
MAX_PUSHED = 10_000
#: longest string accepted in an instrument's info (url, raw_status ...)
_MAX_INFO_LEN = 512


def pairs_key(exchange: str) -> str:
    return f"known:pairs:{exchange}"


def untraded_key(exchange: str) -> str:
    return f"known:untraded:{exchange}"


def info_key(exchange: str) -> str:
    return f"known:info:{exchange}"


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


@dataclass(frozen=True, slots=True)
class ListingParams:
    """Per-exchange listing settings, resolved (tier/weight already in their event string form)."""

    tier: str = ""
    score_weight: str = ""
    delist_confirm_polls: int = 3
    delist_max_fraction: float = 0.1
    #: how long a pushed status outranks a disagreeing full snapshot (ms)
    push_grace_ms: int = 30_000


def default_params(exchange: str) -> ListingParams:
    """Node A's tier and weight for ``exchange`` (``""`` if it has none) and the default delisting rules."""
    return ListingParams(format_tier(resolve_tier(exchange)), format_score_weight(resolve_score_weight(exchange)))


def listing_params(settings: "Settings") -> dict[str, ListingParams]:
    """Every configured exchange's :class:`ListingParams` (configured values, else Node A's)."""
    from shared.settings import EXCHANGE_NAMES

    out: dict[str, ListingParams] = {}
    for name in EXCHANGE_NAMES:
        es = getattr(settings.exchanges, name)
        out[name] = ListingParams(
            tier=format_tier(resolve_tier(name, es.tier)),
            score_weight=format_score_weight(resolve_score_weight(name, es.score_weight)),
            delist_confirm_polls=es.delist_confirm_polls,
            delist_max_fraction=es.delist_max_fraction,
            push_grace_ms=int(es.listing_push_grace * 1000),
        )
    return out


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
    #: ``{market}:{native}`` -> JSON ``[pair, base, quote, url]`` (names kept for a later delisting)
    set_info: dict[str, str] = field(default_factory=dict)

    @property
    def event_name(self) -> str | None:
        """The event's ``event`` field (listing, pre_listing, ...), None for a state-only update."""
        if self.event is None:
            return None
        fields = self.event[3]
        for i in range(0, len(fields) - 1, 2):
            if fields[i] == "event":
                return fields[i + 1]
        return None


@dataclass(slots=True)
class Change:
    """A decided change for one symbol (the pure diff's output)."""

    native_symbol: str
    info: dict[str, str]
    event: str | None          # EV_* or None (state only)
    previous_status: str | None
    untraded: bool | None      # True: add to untraded, False: remove, None: leave
    #: event text instead of the default one for ``event`` (relisting, delisting by absence)
    raw_text: str | None = None


def _untraded_removal(native: str, untraded: set[str]) -> bool | None:
    return False if native in untraded else None


def diff_instruments(
    known: Mapping[str, str], untraded: set[str], instruments: Mapping[str, dict[str, str]],
) -> list[Change]:
    """Changes implied by the symbols *present* in ``instruments`` against ``known`` (native ->
    status) and ``untraded`` (natives never seen trading), for a market already seeded. Missing
    symbols are :func:`count_misses`' business."""
    out: list[Change] = []
    for native, info in instruments.items():
        status = info["status"]
        old = known.get(native)
        if old == status:
            continue
        if old is None:
            if status == TRADING:
                out.append(Change(native, info, EV_LISTING, None, None))
            elif status == DELISTED:
                out.append(Change(native, info, None, None, None))
            else:
                out.append(Change(native, info, EV_PRE_LISTING, None, True))
        elif old == DELISTED:  # it came back
            b, q, m = info["base"], info["quote"], info["market"]
            if status == TRADING:
                out.append(Change(native, info, EV_LISTING, old, _untraded_removal(native, untraded),
                                  f"{b}/{q} trading again after a delisting ({m})"))
            else:
                out.append(Change(native, info, EV_PRE_LISTING, old, True,
                                  f"{b}/{q} listed again after a delisting, not yet trading: "
                                  f"{info.get('raw_status', '')} ({m})"))
        elif status == DELISTED:
            out.append(Change(native, info, EV_DELISTING, old, _untraded_removal(native, untraded)))
        elif status == TRADING and native in untraded:
            out.append(Change(native, info, EV_LISTING, old, False))
        else:
            out.append(Change(native, info, EV_STATUS_CHANGE, old, None))
    return out


def seed_changes(instruments: Mapping[str, dict[str, str]]) -> list[Change]:
    """The silent baseline: every instrument recorded, pre-trading ones marked untraded."""
    return [
        Change(native, info, None, None, True if info["status"] == PRE_TRADING else None)
        for native, info in instruments.items()
    ]


@dataclass(slots=True)
class MissCount:
    """What one full snapshot did to the miss counts of a market."""

    #: symbols whose absence is now confirmed (their counts removed): delist them
    confirmed: list[str]
    #: the snapshot missed too many symbols to be believed: no count advanced
    truncated: bool
    #: known, not-delisted symbols absent from the snapshot
    missing: int
    #: known, not-delisted symbols of the market
    active: int


def count_misses(
    known: Mapping[str, str], present: Container[str], misses: dict[str, int], *,
    confirm_polls: int, max_fraction: float,
) -> MissCount:
    """Advance ``misses`` (native -> consecutive full snapshots it was absent from; updated in
    place) for one *full* snapshot whose symbols are ``present``.

    Present symbols have their count removed. If more than ``max_fraction`` of the known,
    not-delisted symbols are absent (and more than one: a small market can still lose a symbol),
    the snapshot is truncated and no count advances. A symbol reaching ``confirm_polls`` is
    returned in ``confirmed`` and its count dropped.
    """
    for native in [n for n in misses if n in present]:
        del misses[native]
    missing: list[str] = []
    active = 0
    for native, status in known.items():
        if status == DELISTED:
            continue
        active += 1
        if native not in present:
            missing.append(native)
    if len(missing) > 1 and len(missing) > max_fraction * active:
        return MissCount([], True, len(missing), active)
    confirmed: list[str] = []
    for native in missing:
        n = misses.get(native, 0) + 1
        if n >= confirm_polls:
            confirmed.append(native)
            misses.pop(native, None)
        else:
            misses[native] = n
    return MissCount(confirmed, False, len(missing), active)


def encode_info(info: Mapping[str, str]) -> str:
    """The names kept per symbol for a later delisting by absence: JSON ``[pair, base, quote, url]``."""
    return orjson.dumps([info["symbol"], info["base"], info["quote"], info.get("url", "")]).decode()


def decode_info(native: str, market: str, stored: str | None) -> dict[str, str]:
    """An instrument info (status ``delisted``) from :func:`encode_info`'s form; a missing or
    damaged record degrades to the native symbol as the name rather than failing."""
    pair, base, quote, url = native, native, "", ""
    if stored:
        try:
            v = orjson.loads(stored)
            if isinstance(v, list) and len(v) == 4 and all(isinstance(x, str) for x in v):
                pair, base, quote, url = v
        except orjson.JSONDecodeError:
            pass
    return {"symbol": pair, "base": base, "quote": quote, "market": market, "status": DELISTED,
            "raw_status": "", "url": url}


class _ExchangeState:
    """In-memory copy of one exchange's Redis state, plus the (memory-only) miss counts."""

    __slots__ = ("by_market", "untraded", "info", "misses", "pushed")

    def __init__(self, fields: dict[str, str], untraded_members: set[str], infos: dict[str, str]) -> None:
        self.by_market: dict[str, dict[str, str]] = {}
        self.untraded: dict[str, set[str]] = {}
        self.info: dict[str, dict[str, str]] = {}
        self.misses: dict[str, dict[str, int]] = {}
        #: market -> native -> (status, detected_at ms, first seen by a push) of its latest pushed
        #: change (memory only, pruned)
        self.pushed: dict[str, dict[str, tuple[str, int, bool]]] = {}
        for f, status in fields.items():
            market, sep, native = f.partition(":")
            if sep:
                self.by_market.setdefault(market, {})[native] = status
        for m in untraded_members:
            market, sep, native = m.partition(":")
            if sep:
                self.untraded.setdefault(market, set()).add(native)
        for f, stored in infos.items():
            market, sep, native = f.partition(":")
            if sep:
                self.info.setdefault(market, {})[native] = stored


class _RunLog:
    """Logs runs of bad instrument lists (empty, truncated) per exchange + market: the start of a
    run and its end, not every poll of an outage; a new run within ``interval`` seconds of the
    last logged one is counted but not logged (a flapping endpoint must not flood the log)."""

    def __init__(self, interval: float = 300.0) -> None:
        self.interval = interval
        self._runs: dict[tuple[str, str], int] = {}
        self._last_logged: dict[tuple[str, str], float] = {}
        self._logged: set[tuple[str, str]] = set()

    def bad(self, key: tuple[str, str]) -> bool:
        """Count one bad list; True when it starts a run that should be logged."""
        n = self._runs[key] = self._runs.get(key, 0) + 1
        if n != 1:
            return False
        now = time.monotonic()
        if now - self._last_logged.get(key, -1e18) < self.interval:
            return False
        self._last_logged[key] = now
        self._logged.add(key)
        return True

    def good(self, key: tuple[str, str]) -> int | None:
        """A good list: the length of the run it ends, if that run's start was logged."""
        n = self._runs.pop(key, 0)
        if key in self._logged:
            self._logged.discard(key)
            return n
        return None


class _Inbox:
    """Pending messages of one exchange + market in arrival order: at most one full snapshot (a
    newer one replaces it, as only the latest list matters) and at most ``max_partials`` partial
    updates (the oldest dropped first). Partials are never discarded for a full snapshot: a push
    can be newer than a list the exchange's REST cache served."""

    __slots__ = ("items", "partials", "max_partials")

    def __init__(self, max_partials: int) -> None:
        self.items: deque[InstrumentsMsg] = deque()
        self.partials = 0
        self.max_partials = max_partials

    def add(self, msg: InstrumentsMsg) -> bool:
        """Queue ``msg``; False when a partial had to be dropped to make room."""
        dropped = False
        if msg.full:
            for old in [m for m in self.items if m.full]:
                self.items.remove(old)
        else:
            if self.partials >= self.max_partials:
                oldest = next(m for m in self.items if not m.full)
                self.items.remove(oldest)
                self.partials -= 1
                dropped = True
            self.partials += 1
        self.items.append(msg)
        return dropped

    def pop(self) -> InstrumentsMsg:
        msg = self.items.popleft()
        if not msg.full:
            self.partials -= 1
        return msg


#: exchange -> (status fields, untraded members, info fields), as stored in Redis
StateLoader = Callable[[str], Awaitable[tuple[dict[str, str], set[str], dict[str, str]]]]


class ListingTracker:
    """Turns ``instruments`` messages into :class:`ListingUpdate` units.

    ``submit`` only queues (latest full snapshot per exchange + market, bounded partials), so a
    Redis outage holds at most one snapshot per market. ``process`` loads an exchange's state once
    (through ``load_state``, which raises while Redis is down: that exchange's inbox is then kept),
    diffs, updates the in-memory copy and returns the updates in order.

    ``params`` gives each exchange's tier, score weight and delisting rules (see
    :func:`listing_params`); an exchange not in it gets :func:`default_params`.
    """

    def __init__(self, node_id: str, *, max_partials: int = 256,
                 params: Mapping[str, ListingParams] | None = None) -> None:
        self.node_id = node_id
        self.max_partials = max_partials
        self._params: dict[str, ListingParams] = dict(params or {})
        self._state: dict[str, _ExchangeState] = {}
        self._inbox: dict[tuple[str, str], _Inbox] = {}
        self._empty_log = _RunLog()
        self._truncated_log = _RunLog()
        # counters (exposed by the publisher's log/stats)
        self.snapshots = 0
        self.ignored_empty = 0
        self.ignored_unseeded = 0
        #: full snapshots treated as truncated (no miss counted)
        self.truncated_snapshots = 0
        self.invalid_instruments = 0
        self.partials_dropped = 0
        #: full-snapshot rows ignored because a recent push said otherwise
        self.push_overrides = 0
        self.seeded: list[tuple[str, str]] = []

    def params_for(self, exchange: str) -> ListingParams:
        p = self._params.get(exchange)
        if p is None:
            p = self._params[exchange] = default_params(exchange)
        return p

    # ---- queueing ----
    def submit(self, msg: InstrumentsMsg) -> None:
        self.invalid_instruments += msg.invalid
        key = (msg.exchange, msg.market)
        if msg.full and not msg.instruments:
            self.ignored_empty += 1
            if self._empty_log.bad(key):
                log.warning("%s %s: empty instruments snapshot ignored (treated as an outage; "
                            "logged once until a non-empty one)", msg.exchange, msg.market)
            return
        if msg.full and (run := self._empty_log.good(key)) is not None:
            log.info("%s %s: non-empty instruments snapshot again after %d empty", msg.exchange, msg.market, run)
        if not msg.full and not msg.instruments:
            return
        box = self._inbox.get(key)
        if box is None:
            box = self._inbox[key] = _Inbox(self.max_partials)
        if box.add(msg):
            self.partials_dropped += 1

    def has_pending(self) -> bool:
        return any(b.items for b in self._inbox.values())

    def pending_count(self) -> int:
        return sum(len(b.items) for b in self._inbox.values())

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
            if box is None or not box.items:
                continue
            exchange, market = key
            if exchange in failed:
                continue
            state = self._state.get(exchange)
            if state is None:
                try:
                    fields, untraded, infos = await load_state(exchange)
                except Exception as exc:  # noqa: BLE001 - typically RedisUnavailable; retried later
                    failed.add(exchange)
                    error = error or exc
                    continue
                state = self._state[exchange] = _ExchangeState(fields, untraded, infos)
                log.info("%s: loaded %d known pairs from Redis", exchange, len(fields))
            while box.items:
                updates.extend(self._apply(state, box.pop()))
        return updates, error

    def _apply(self, state: _ExchangeState, msg: InstrumentsMsg) -> list[ListingUpdate]:
        self.snapshots += 1
        market = msg.market
        known = state.by_market.get(market)
        untraded = state.untraded.setdefault(market, set())
        infos = state.info.setdefault(market, {})
        if not known:
            if not msg.full:
                self.ignored_unseeded += 1
                log.info("%s %s: partial update before any full snapshot ignored", msg.exchange, market)
                return []
            known = state.by_market.setdefault(market, {})
            changes = seed_changes(msg.instruments)
            self.seeded.append((msg.exchange, market))
            log.info("%s %s: first snapshot, %d pairs recorded silently", msg.exchange, market, len(changes))
            upd = ListingUpdate(msg.exchange, market)
            for ch in changes:
                self._record(known, untraded, infos, market, ch, upd)
            return [upd] if changes else []

        params = self.params_for(msg.exchange)
        pushed = state.pushed.setdefault(market, {})
        present: Container[str] = msg.instruments
        instruments: Mapping[str, dict[str, str]] = msg.instruments
        if msg.full and pushed:
            recent = self._recent_pushes(pushed, msg.detected_at, params.push_grace_ms)
            if recent:
                instruments = {n: i for n, i in msg.instruments.items()
                               if n not in recent or recent[n][0] == i["status"]}
                self.push_overrides += len(msg.instruments) - len(instruments)
                # a symbol the push revealed may not be in the REST list yet; one that was
                # listed before and has vanished is really gone
                present = msg.instruments.keys() | {n for n, (_, first_seen) in recent.items() if first_seen}
                for native in recent.keys() & msg.instruments.keys():
                    status, pushed_at, _ = pushed[native]
                    pushed[native] = (status, pushed_at, False)  # the REST list has caught up with it
        changes = diff_instruments(known, untraded, instruments)
        if not msg.full:
            # only a push that changed something outranks the poll: a push repeating a known
            # status (OKX re-sends its whole list on every subscription) proves nothing new
            for ch in changes:
                prior = pushed.pop(ch.native_symbol, None)  # re-inserted last: the dict stays in push order
                first_seen = ch.native_symbol not in known or (prior is not None and prior[2])
                pushed[ch.native_symbol] = (ch.info["status"], msg.detected_at, first_seen)
            while len(pushed) > MAX_PUSHED:
                del pushed[next(iter(pushed))]
        misses = state.misses.setdefault(market, {})
        if msg.full:
            mc = count_misses(known, present, misses, confirm_polls=params.delist_confirm_polls,
                              max_fraction=params.delist_max_fraction)
            key = (msg.exchange, market)
            if mc.truncated:
                self.truncated_snapshots += 1
                if self._truncated_log.bad(key):
                    log.warning("%s %s: instruments list missing %d of %d known symbols (> %.0f%%): treated "
                                "as truncated, no delisting counted (logged once until a complete list)",
                                msg.exchange, market, mc.missing, mc.active, params.delist_max_fraction * 100)
            elif (run := self._truncated_log.good(key)) is not None:
                log.info("%s %s: complete instruments list again after %d truncated", msg.exchange, market, run)
            for native in mc.confirmed:
                info = decode_info(native, market, infos.get(native))
                changes.append(Change(
                    native, info, EV_DELISTING, known[native], _untraded_removal(native, untraded),
                    f"{info['base']}/{info['quote']} delisted: missing from {params.delist_confirm_polls} "
                    f"consecutive instrument lists ({market})",
                ))
        elif misses:
            for native in [n for n in misses if n in msg.instruments]:
                del misses[native]  # seen again (a push update): its absence run is over

        out: list[ListingUpdate] = []
        for ch in changes:
            upd = ListingUpdate(msg.exchange, market)
            if ch.event is not None:
                upd.event = listing_event(
                    exchange=msg.exchange, native_symbol=ch.native_symbol, info=ch.info, event=ch.event,
                    source=msg.source, detected_at=msg.detected_at, node_id=self.node_id,
                    previous_status=ch.previous_status, raw_text=ch.raw_text,
                    tier=params.tier, score_weight=params.score_weight,
                )
                log.info("%s %s %s: %s (%s -> %s)", msg.exchange, market, ch.native_symbol, ch.event,
                         ch.previous_status, ch.info["status"])
            self._record(known, untraded, infos, market, ch, upd, keep_info=ch.native_symbol not in msg.instruments)
            out.append(upd)

        # symbols known from before this module kept their names: record them once (state only)
        backfill: ListingUpdate | None = None
        for native, info in msg.instruments.items():
            if native not in infos:
                if backfill is None:
                    backfill = ListingUpdate(msg.exchange, market)
                stored = infos[native] = encode_info(info)
                backfill.set_info[state_field(market, native)] = stored
        if backfill is not None:
            out.append(backfill)
        return out

    @staticmethod
    def _recent_pushes(pushed: dict[str, tuple[str, int, bool]], at: int, grace_ms: int,
                       ) -> dict[str, tuple[str, bool]]:
        """native -> (pushed status, first seen by the push) for pushes within ``grace_ms``
        before ``at``; older ones are forgotten (the poll is the truth for them again)."""
        recent: dict[str, tuple[str, bool]] = {}
        for native, (status, pushed_at, first_seen) in list(pushed.items()):
            if at < pushed_at + grace_ms:
                recent[native] = (status, first_seen)
            else:
                del pushed[native]
        return recent

    @staticmethod
    def _record(known: dict[str, str], untraded: set[str], infos: dict[str, str], market: str, ch: Change,
                upd: ListingUpdate, keep_info: bool = False) -> None:
        f = state_field(market, ch.native_symbol)
        known[ch.native_symbol] = ch.info["status"]
        upd.set_status[f] = ch.info["status"]
        if not keep_info:  # a delisting by absence keeps the names it was built from
            stored = infos[ch.native_symbol] = encode_info(ch.info)
            upd.set_info[f] = stored
        if ch.untraded is True:
            untraded.add(ch.native_symbol)
            upd.untraded_add.append(f)
        elif ch.untraded is False:
            untraded.discard(ch.native_symbol)
            upd.untraded_remove.append(f)


def _hset(key: str, mapping: dict[str, str]) -> tuple:
    flat: list[str] = []
    for f, v in mapping.items():
        flat.append(f)
        flat.append(v)
    return ("HSET", key, *flat)


def state_commands(upd: ListingUpdate) -> list[tuple]:
    """The Redis commands that record ``upd``'s state (to go in the same MULTI/EXEC as its event)."""
    cmds: list[tuple] = []
    if upd.set_status:
        cmds.append(_hset(pairs_key(upd.exchange), upd.set_status))
    if upd.untraded_add:
        cmds.append(("SADD", untraded_key(upd.exchange), *upd.untraded_add))
    if upd.untraded_remove:
        cmds.append(("SREM", untraded_key(upd.exchange), *upd.untraded_remove))
    if upd.set_info:
        cmds.append(_hset(info_key(upd.exchange), upd.set_info))
    return cmds


def load_commands(exchange: str) -> list[tuple]:
    """The reads :func:`decode_state` decodes, in order: HGETALL pairs, SMEMBERS untraded, HGETALL info."""
    return [("HGETALL", pairs_key(exchange)), ("SMEMBERS", untraded_key(exchange)), ("HGETALL", info_key(exchange))]


def _decode_hash(reply: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    it = iter(reply or [])
    for k, v in zip(it, it):
        out[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
    return out


def decode_state(hash_reply: Any, set_reply: Any, info_reply: Any = None,
                 ) -> tuple[dict[str, str], set[str], dict[str, str]]:
    """HGETALL pairs + SMEMBERS untraded + HGETALL info replies (hiredis: lists of bytes)
    -> (fields, members, infos)."""
    for r in (hash_reply, set_reply, info_reply):
        if isinstance(r, Exception):
            raise r
    members = {m.decode("utf-8", "replace") for m in (set_reply or [])}
    return _decode_hash(hash_reply), members, _decode_hash(info_reply)
