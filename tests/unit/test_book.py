"""Order-book engine: recorded chains replayed to the exact book, sequence rules, resync isolation,
bounds and request pacing. Fixtures: ../shared/fixtures/ws (SOURCES.md sections 1-5).

Fixture frames become BookMsg through small helpers here (the real parsers live elsewhere);
expected books are computed independently by a naive dict replay."""

from __future__ import annotations

import json
import zlib
from decimal import Decimal
from typing import Any

import pytest

from shared.events import fields_to_dict
from shared.marketdata import BookMsg
from tests.conftest import FIXTURES
from workers.book import (
    RESUBSCRIBE, SNAPSHOT, BinanceFuturesKeeper, BinanceSpotKeeper, BookConfig, BookManager,
    BybitKeeper, DeribitKeeper, LocalBook, OkxKeeper, OkxRestKeeper,
)

WS = FIXTURES / "ws"  # the repo's copy of ../shared/fixtures/ws

#: native -> (canonical, market), as the workers' symbol maps are
SYMBOLS: dict[str, tuple[str, str]] = {
    "NKNUSDT": ("NKN-USDT", "spot"),
    "SUSHIUSDT": ("SUSHI-USDT", "perp"),
    "BTC-USD-220527": ("BTC-USD", "future"),
    "BTC-USDT": ("BTC-USDT", "spot"),
    "BTC-24SEP21-8000-P": ("BTC-USD", "option"),
    "BTC-PERPETUAL": ("BTC-USD", "perp"),
    "BTCPERP": ("BTC-USDC", "perp"),
}


def load(name: str, **kw: Any) -> list[Any]:
    return json.loads((WS / name).read_text(), **kw)


def levels(raw: list[list[Any]]) -> list[tuple[str, str]]:
    return [(x[0], x[1]) for x in raw]


# ---- fixture frame -> BookMsg (test-only helpers) ----
def binance_diff(frame: dict, market: str = "spot", rx: int = 0) -> BookMsg:
    d = frame.get("data", frame)
    canon, _ = SYMBOLS.get(d["s"], ("X-Y", market))
    return BookMsg("binance", market, canon, d["s"], False, d["u"], levels(d["b"]), levels(d["a"]),
                   ts_exchange=d["E"], ts_receive=rx, prev_seq=d.get("pu"), first_seq=d["U"])


def binance_snapshot(body: dict, native: str, market: str = "spot") -> BookMsg:
    canon, _ = SYMBOLS.get(native, ("BTC-USDT", market))
    return BookMsg("binance", market, canon, native, True, body["lastUpdateId"], levels(body["bids"]),
                   levels(body["asks"]), ts_exchange=body.get("E", 0))


def okx_msg(frame: dict) -> BookMsg:
    d = frame["data"][0]
    native = frame["arg"]["instId"]
    canon, market = SYMBOLS[native]
    return BookMsg("okx", market, canon, native, frame["action"] == "snapshot", int(d.get("seqId", 0)),
                   [tuple(x) for x in d["bids"]], [tuple(x) for x in d["asks"]], ts_exchange=int(d["ts"]),
                   prev_seq=d.get("prevSeqId"), checksum=d.get("checksum"))


def deribit_msg(frame: dict) -> BookMsg:
    d = frame["params"]["data"]
    canon, market = SYMBOLS[d["instrument_name"]]

    def side(entries: list[list[Any]]) -> list[tuple[str, str]]:
        return [(p, "0" if action == "delete" else amount) for action, p, amount in entries]

    return BookMsg("deribit", market, canon, d["instrument_name"], d["type"] == "snapshot", d["change_id"],
                   side(d["bids"]), side(d["asks"]), ts_exchange=d["timestamp"], prev_seq=d.get("prev_change_id"))


def bybit_msg(frame: dict, market: str) -> BookMsg:
    d = frame["data"]
    canon = {"BTCPERP": "BTC-USDC"}.get(d["s"], "BTC-USDT")
    return BookMsg("bybit", market, canon, d["s"], frame["type"] == "snapshot", d["u"], levels(d["b"]),
                   levels(d["a"]), ts_exchange=frame["ts"])


def naive(msgs: list[BookMsg]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Independent expected book: dicts keyed by Decimal price, sorted at the end."""
    bids: dict[Decimal, tuple[str, str]] = {}
    asks: dict[Decimal, tuple[str, str]] = {}
    for m in msgs:
        if m.snapshot:
            bids.clear()
            asks.clear()
        for book, side in ((bids, m.bids), (asks, m.asks)):
            for lv in side:
                if Decimal(lv[1]) == 0:
                    book.pop(Decimal(lv[0]), None)
                else:
                    book[Decimal(lv[0])] = (lv[0], lv[1])
    return [bids[k] for k in sorted(bids, reverse=True)], [asks[k] for k in sorted(asks)]


def wire(ev: list) -> dict[str, str]:
    return fields_to_dict(ev[3])


def types(events: list[list]) -> list[str]:
    return [e[2] for e in events]


def okx_crc(text: str) -> int:
    c = zlib.crc32(text.encode())
    return c - (1 << 32) if c >= 1 << 31 else c


# ============================================================================ LocalBook
def test_local_book_zero_spellings_remove_and_order_is_numeric() -> None:
    b = LocalBook(100)
    b.load([("9.5", "1"), ("10", "2"), ("9.50000001", "3")], [("11", "1"), ("10.5", "2")])
    assert b.top(5) == ([("10", "2"), ("9.50000001", "3"), ("9.5", "1")], [("10.5", "2"), ("11", "1")])
    b.apply([("10", "0"), ("9.5", "0.00000000")], [("11", "0.0"), ("10.50", "7")])
    # "10.50" is the same level as "10.5": the latest spelling is kept
    assert b.top(5) == ([("9.50000001", "3")], [("10.50", "7")])
    b.apply([("1e1", "2"), ("9", "0E-8")], [])
    assert b.top(1)[0] == [("1e1", "2")]
    assert b.depth == (2, 1)


def test_local_book_skips_garbage_levels() -> None:
    b = LocalBook(10)
    bad = b.apply([("abc", "1"), ("NaN", "1"), ("Infinity", "1"), ("-5", "1"), ("0", "1"), (1.5, "1"),
                   ("5", 2), ("5", "-1"), ("5", "x"), ("5",), None, 7, ("5" * 100, "1"), ("4", "1")],
                  [("6", "sNaN"), ["6", "1", "0", "3"]])
    assert bad == 14
    assert b.top(5) == ([("4", "1")], [("6", "1")])


def test_local_book_depth_cap_drops_worst() -> None:
    b = LocalBook(3)
    b.load([(str(p), "1") for p in range(1, 10)], [(str(p), "1") for p in range(10, 20)])
    assert b.top(10) == ([("9", "1"), ("8", "1"), ("7", "1")], [("10", "1"), ("11", "1"), ("12", "1")])
    b.apply([("8.5", "2")], [("9.5", "2"), ("30", "1")])
    assert b.top(10) == ([("9", "1"), ("8.5", "2"), ("8", "1")], [("9.5", "2"), ("10", "1"), ("11", "1")])
    assert b.depth == (3, 3)
    assert b.trimmed == 6 + 7 + 3


def test_okx_checksum_docs_example() -> None:
    b = LocalBook(400)
    b.load([("3366.1", "7")], [("3366.8", "9"), ("3368", "8"), ("3372", "8")])
    assert b.okx_checksum() == okx_crc("3366.1:7:3366.8:9:3368:8:3372:8") == 831078360
    b.load([], [])
    assert b.okx_checksum() == okx_crc("")


# ============================================================================ Binance spot
def test_binance_spot_sync_sequence_nknusdt() -> None:
    f = load("binance_spot/sync_sequence_nknusdt.json")
    diffs = [binance_diff(f[0]), binance_diff(f[2]), binance_diff(f[3])]
    snap = binance_snapshot(f[1], "NKNUSDT")
    m = BookManager(BookConfig(max_depth=5000, top_depth=5, top_interval=1.0))
    # frame 1 arrives before the snapshot: buffered, snapshot requested
    assert m.on_message(diffs[0], now=100.0) == []
    reqs = m.snapshot_requests(100.0)
    assert [(r.kind, r.exchange, r.market, r.symbol, r.native_symbol) for r in reqs] == [
        (SNAPSHOT, "binance", "spot", "NKN-USDT", "NKNUSDT")]
    assert m.on_message(snap, now=100.3) == []
    assert m.on_message(diffs[1], now=100.5) == []
    assert m.on_message(diffs[2], now=100.6) == []
    keeper = m.book("binance", "spot", "NKNUSDT")
    assert keeper.synced and keeper.last_seq == 499869757
    # frame 1 (u <= lastUpdateId) was dropped; snapshot + frames 2, 3 applied
    assert keeper.book.top(10_000) == naive([snap, diffs[1], diffs[2]])
    # one new bid level (0.35170000); the other prices already existed
    assert keeper.book.depth == (610, 1000)
    bids, asks = keeper.book.top(3)
    assert bids == [("0.35210000", "672.00000000"), ("0.35200000", "1290.00000000"), ("0.35190000", "3260.00000000")]
    assert asks == [("0.35250000", "3959.00000000"), ("0.35260000", "3199.00000000"), ("0.35270000", "4201.00000000")]
    tops = m.due_tops(101.0)
    assert len(tops) == 1
    t = wire(tops[0])
    assert tops[0][0] == "md:book:binance:spot:NKN-USDT"
    assert t["seq"] == "499869757" and t["depth"] == "5" and t["ts_exchange"] == "1633998512668"
    assert json.loads(t["bids"])[:2] == [["0.35210000", "672.00000000"], ["0.35200000", "1290.00000000"]]
    assert m.due_tops(101.5) == []          # cadence
    assert m.due_tops(102.0) == []          # nothing changed
    s = m.stats()
    assert s["gaps"] == 0 and s["dropped"] == 1 and s["applied"] == 3 and s["snapshot_pending"] == 0
    assert s["symbols"]["binance:spot:NKN-USDT"]["synced"] is True


def test_binance_spot_snapshot_older_than_buffer_is_fetched_again() -> None:
    f = load("binance_spot/sync_sequence_nknusdt.json")
    m = BookManager(BookConfig(snapshot_rate=0))
    m.on_message(binance_diff(f[2]), 1.0)                     # first buffered U = 499869753
    assert len(m.snapshot_requests(1.0)) == 1
    old = binance_snapshot(f[1], "NKNUSDT")
    old.seq = 499869750                                       # < first U - 1
    assert m.on_message(old, 1.2) == []
    k = m.book("binance", "spot", "NKNUSDT")
    assert not k.synced and k.buffered == 1
    assert m.stats()["stale_snapshots"] == 1
    assert [r.native_symbol for r in m.snapshot_requests(1.3)] == ["NKNUSDT"]
    m.on_message(binance_snapshot(f[1], "NKNUSDT"), 1.5)      # lastUpdateId = first U - 1: fits
    assert k.synced and k.last_seq == 499869754


def test_binance_spot_gap_resyncs_only_that_symbol() -> None:
    f = load("binance_spot/sync_sequence_nknusdt.json")
    other_snap = binance_snapshot(load("binance_spot/rest_depth_snapshot.json")[0], "BTCUSDT")
    m = BookManager(BookConfig(top_interval=0))
    for msg in (binance_diff(f[0]), binance_snapshot(f[1], "NKNUSDT"), binance_diff(f[2]), binance_diff(f[3])):
        m.on_message(msg, 1.0)
    m.on_message(BookMsg("binance", "spot", "BTC-USDT", "BTCUSDT", False, 14527958488, [("60650.00000000", "1")], [],
                         first_seq=14527958488), 1.0)         # buffered, then the snapshot
    m.on_message(other_snap, 1.0)
    other = m.book("binance", "spot", "BTCUSDT")
    assert other.synced and other.book.top(1)[0] == [("60650.00000000", "1")]
    other_before = other.book.top(10_000)
    m.snapshot_requests(1.0)
    m.due_tops(1.0)

    # injected gap: U jumps past last u + 1
    bad = binance_diff(f[3])
    bad.first_seq, bad.seq = 499869760, 499869761
    events = m.on_message(bad, 2.0)
    assert types(events) == ["book_gap"]
    g = wire(events[0])
    assert events[0][0] == "md:book:binance:spot:NKN-USDT"
    assert (g["reason"], g["last_seq"], g["got_seq"]) == ("gap", "499869757", "499869761")
    nkn = m.book("binance", "spot", "NKNUSDT")
    assert not nkn.synced and nkn.buffered == 1 and len(nkn.book) == 0
    # further diffs while waiting: buffered, no second marker
    nxt = binance_diff(f[3])
    nxt.first_seq, nxt.seq = 499869762, 499869763
    assert m.on_message(nxt, 2.1) == []
    assert [r.native_symbol for r in m.snapshot_requests(2.2)] == ["NKNUSDT"]
    assert m.snapshot_requests(2.3) == []
    # the other symbol is untouched and still publishes
    assert other.synced and other.book.top(10_000) == other_before
    tops = m.due_tops(3.0)
    assert [wire(t)["native_symbol"] for t in tops] == []      # nothing changed, NKN not synced
    s = m.stats()
    assert s["gaps"] == 1 and s["symbols"]["binance:spot:NKN-USDT"]["gaps"] == 1
    assert s["symbols"]["binance:spot:BTC-USDT"]["gaps"] == 0
    # a snapshot reaching the new chain resyncs NKN
    snap = BookMsg("binance", "spot", "NKN-USDT", "NKNUSDT", True, 499869759, [("0.3", "1")], [("0.4", "1")])
    m.on_message(snap, 3.5)
    assert nkn.synced and nkn.last_seq == 499869763
    assert nkn.book.top(1) == ([("0.35200000", "1290.00000000")], [("0.4", "1")])
    assert [wire(t)["native_symbol"] for t in m.due_tops(4.0)] == ["NKNUSDT"]


# ============================================================================ Binance USD-M
def test_binance_usdm_sync_sequence_sushiusdt() -> None:
    chain = load("binance_usdm/depthUpdate.json")[:2]     # earlier consecutive frames of the capture
    f = load("binance_usdm/sync_sequence_sushiusdt.json")
    snap = binance_snapshot(f[1], "SUSHIUSDT", "perp")
    diffs = [binance_diff(x, "perp") for x in (*chain, f[0], f[2], f[3])]
    m = BookManager(BookConfig(publish_deltas=True, publish_tops=False))
    for d in diffs[:3]:
        assert m.on_message(d, 1.0) == []
    assert m.book("binance", "perp", "SUSHIUSDT").buffered == 3
    events = m.on_message(snap, 1.2)          # all 3 buffered have u < lastUpdateId: dropped
    assert types(events) == ["book_delta"]
    assert wire(events[0])["snapshot"] == "1" and wire(events[0])["seq"] == "600859605926"
    events = m.on_message(diffs[3], 1.3) + m.on_message(diffs[4], 1.4)
    assert types(events) == ["book_delta", "book_delta"]
    d1, d2 = wire(events[0]), wire(events[1])
    assert (d1["seq"], d1["prev_seq"], d1["snapshot"]) == ("600859607423", "600859604824", "0")
    assert (d2["seq"], d2["prev_seq"]) == ("600859609417", "600859607423")
    assert json.loads(d2["asks"])[0] == ["7.6220", "3284"]
    k = m.book("binance", "perp", "SUSHIUSDT")
    assert k.synced and k.last_seq == 600859609417
    assert k.book.top(10_000) == naive([snap, diffs[3], diffs[4]])
    assert k.book.top(2) == ([("7.6110", "6"), ("7.6080", "202")], [("7.6120", "297"), ("7.6130", "177")])
    assert m.stats()["dropped"] == 3


def test_binance_usdm_pu_mismatch_is_one_gap() -> None:
    f = load("binance_usdm/sync_sequence_sushiusdt.json")
    m = BookManager()
    for msg in (binance_diff(f[0], "perp"), binance_snapshot(f[1], "SUSHIUSDT", "perp"), binance_diff(f[2], "perp")):
        m.on_message(msg, 1.0)
    m.snapshot_requests(1.0)
    bad = binance_diff(f[3], "perp")
    bad.prev_seq = 600859607000
    events = m.on_message(bad, 2.0)
    assert types(events) == ["book_gap"]
    g = wire(events[0])
    assert (g["reason"], g["last_seq"], g["got_seq"]) == ("gap", "600859607423", "600859609417")
    assert [r.kind for r in m.snapshot_requests(2.0)] == [SNAPSHOT]
    # first event after the new snapshot must have U <= lastUpdateId <= u
    m.on_message(BookMsg("binance", "perp", "SUSHI-USDT", "SUSHIUSDT", True, 600859609000, [("7.6", "1")], []), 3.0)
    k = m.book("binance", "perp", "SUSHIUSDT")
    assert k.synced and k.last_seq == 600859609417    # the buffered breaking frame straddles it


# ============================================================================ OKX
def test_okx_books_checksum_after_every_message() -> None:
    frames = load("okx/books.json")[:4]
    msgs = [okx_msg(x) for x in frames]
    k = OkxKeeper(max_depth=400)
    for i, msg in enumerate(msgs):
        out = k.feed(msg)
        assert not any(not isinstance(e, tuple) for e in out.events), f"message {i} broke the book"
        assert k.book.okx_checksum() == msg.checksum, f"checksum after message {i}"
        assert k.book.top(10_000) == naive(msgs[: i + 1])
    b, a = naive(msgs)
    assert k.book.top(1) == (b[:1], a[:1])
    m = BookManager(BookConfig(max_depth=400))
    for msg in msgs:
        assert m.on_message(msg, 1.0) == []
    s = m.stats()
    assert s["checksum_failures"] == 0 and s["applied"] == 4


def test_okx_corrupted_checksum_resyncs_only_that_symbol() -> None:
    frames = load("okx/books.json")
    msgs = [okx_msg(x) for x in frames[:4]]
    other = okx_msg(frames[4])
    other.checksum = 0           # production sends 0 since 2026-06-23: not verified
    m = BookManager(BookConfig(max_depth=400, top_interval=0))
    m.on_message(msgs[0], 1.0)
    m.on_message(other, 1.0)
    m.due_tops(1.0)
    other_before = m.book("okx", "spot", "BTC-USDT").book.top(100)
    msgs[1].checksum += 1
    events = m.on_message(msgs[1], 2.0)
    assert types(events) == ["book_gap"]
    g = wire(events[0])
    assert events[0][0] == "md:book:okx:future:BTC-USD"
    assert g["reason"] == "checksum" and g["ts_exchange"] == "1652459225464"
    assert [(r.kind, r.native_symbol) for r in m.resubscribe_requests(2.0)] == [(RESUBSCRIBE, "BTC-USD-220527")]
    assert m.snapshot_requests(2.0) == []
    # updates until the fresh snapshot are dropped, no more markers
    assert m.on_message(msgs[2], 2.1) == []
    assert m.resubscribe_requests(2.2) == []
    ok = m.book("okx", "spot", "BTC-USDT")
    assert ok.synced and ok.book.top(100) == other_before
    s = m.stats()
    assert s["checksum_failures"] == 1 and s["symbols"]["okx:future:BTC-USD"]["checksum_failures"] == 1
    assert s["symbols"]["okx:spot:BTC-USDT"]["checksum_failures"] == 0
    # resubscribed: the snapshot comes again
    m.on_message(msgs[0], 3.0)
    assert m.book("okx", "future", "BTC-USD-220527").synced
    assert m.stats()["resubscribe_pending"] == 0


def test_okx_docs_snapshot_checksum_artefact() -> None:
    """okx/books.json [4]: the docs example's checksum does not match its levels (SOURCES.md)."""
    msg = okx_msg(load("okx/books.json")[4])
    m = BookManager()
    assert m.on_message(msg, 1.0) == []          # never synced before: counted, no marker
    assert not m.book("okx", "spot", "BTC-USDT").synced
    assert m.stats()["checksum_failures"] == 1
    assert [r.kind for r in m.resubscribe_requests(1.0)] == [RESUBSCRIBE]
    m2 = BookManager(BookConfig(verify_checksum=False))
    m2.on_message(okx_msg(load("okx/books.json")[4]), 1.0)
    k = m2.book("okx", "spot", "BTC-USDT")
    assert k.synced and k.last_seq == 123456
    assert k.book.top(1) == ([("8476.97", "256")], [("8476.98", "415")])


def _okx(seq: int, prev: int | None, bids: list | None = None, asks: list | None = None,
         snapshot: bool = False, checksum: int = 0) -> BookMsg:
    return BookMsg("okx", "spot", "BTC-USDT", "BTC-USDT", snapshot, seq, bids or [], asks or [],
                   prev_seq=prev, checksum=checksum)


def test_okx_seq_rules_keepalive_gap_reset() -> None:
    m = BookManager(BookConfig(top_interval=0))
    m.on_message(_okx(10, -1, [("100", "1")], [("101", "1")], snapshot=True), 1.0)
    assert m.on_message(_okx(11, 10, [("100", "2")]), 1.1) == []
    assert m.on_message(_okx(11, 11), 1.2) == []                 # keep-alive
    k = m.book("okx", "spot", "BTC-USDT")
    assert k.synced and k.last_seq == 11 and m.stats()["dropped"] == 1
    ev = m.on_message(_okx(20, 15), 1.3)                         # prevSeqId != last seqId
    assert [(wire(e)["reason"], wire(e)["last_seq"], wire(e)["got_seq"]) for e in ev] == [("gap", "11", "20")]
    m.on_message(_okx(30, -1, [("99", "1")], [], snapshot=True), 2.0)
    assert k.synced and k.last_seq == 30
    ev = m.on_message(_okx(5, 31), 2.1)                          # seqId < prevSeqId: exchange reset
    assert [wire(e)["reason"] for e in ev] == ["reset"]
    assert not k.synced
    assert m.stats()["resets"] == 1 and m.stats()["gaps"] == 1
    # keep-alive whose prevSeqId is not ours is a gap
    m.on_message(_okx(3, -1, [("99", "1")], [], snapshot=True), 3.0)
    assert [wire(e)["reason"] for e in m.on_message(_okx(7, 7), 3.1)] == ["gap"]


def test_okx_rest_snapshot_path() -> None:
    m = BookManager(BookConfig(okx_rest_snapshot=True, publish_deltas=True, publish_tops=False))
    for seq in (100, 101, 102):
        assert m.on_message(_okx(seq, seq - 1, [(f"{seq}", "1")]), 1.0) == []
    assert [r.kind for r in m.snapshot_requests(1.0)] == [SNAPSHOT]
    assert m.resubscribe_requests(1.0) == []
    rest = _okx(101, None, [("1", "5")], [("200", "1")], snapshot=True)    # REST books: seqId 101
    events = m.on_message(rest, 1.5)
    # 100, 101 discarded (seqId <= 101); 102 applied (prevSeqId 101 <= 101 < 102)
    assert [(wire(e)["seq"], wire(e)["snapshot"]) for e in events] == [("101", "1"), ("102", "0")]
    k = m.book("okx", "spot", "BTC-USDT")
    assert isinstance(k, OkxRestKeeper) and k.synced and k.last_seq == 102
    assert k.book.top(5) == ([("102", "1"), ("1", "5")], [("200", "1")])
    # a gap on this path asks for a REST snapshot again
    ev = m.on_message(_okx(110, 105), 2.0)
    assert [wire(e)["reason"] for e in ev] == ["gap"] and ev[0][0] == "md:book_delta:okx:spot:BTC-USDT"
    assert [r.kind for r in m.snapshot_requests(2.0)] == [SNAPSHOT]
    # a REST snapshot older than the buffered chain is fetched again
    assert m.on_message(_okx(100, None, snapshot=True), 2.5) == []
    assert m.stats()["stale_snapshots"] == 1 and not k.synced
    m.on_message(_okx(105, None, [("3", "3")], snapshot=True), 3.0)
    assert k.synced and k.last_seq == 110


# ============================================================================ Deribit
def test_deribit_book_chain() -> None:
    frames = load("deribit/book.json", parse_float=str)
    msgs = [deribit_msg(x) for x in frames]
    assert msgs[0].asks[1] == ("0.002", "22.0") and msgs[2].asks == [("0.001", "0")]
    m = BookManager(BookConfig(top_interval=0, top_depth=3))
    for msg in msgs[:4]:
        assert m.on_message(msg, 1.0) == []
    k = m.book("deribit", "option", "BTC-24SEP21-8000-P")
    assert k.synced and k.last_seq == 33195894526
    assert k.book.top(10_000) == naive(msgs[:4])
    assert k.book.top(2) == ([("0.0005", "153.1")], [("0.001", "2.7"), ("0.0015", "94.7")])
    t = wire(m.due_tops(1.0)[0])
    assert json.loads(t["asks"]) == [["0.001", "2.7"], ["0.0015", "94.7"], ["0.002", "22.0"]]
    # [4]: a change of another instrument whose snapshot we never saw -> dropped, resubscribe
    assert m.on_message(msgs[4], 1.1) == []
    assert [(r.kind, r.native_symbol) for r in m.resubscribe_requests(1.1)] == [(RESUBSCRIBE, "BTC-PERPETUAL")]
    # injected gap on the option: one marker, the perpetual's state untouched
    bad = deribit_msg(frames[3])
    bad.prev_seq, bad.seq = 33195894600, 33195894700
    ev = m.on_message(bad, 2.0)
    assert [(wire(e)["reason"], wire(e)["last_seq"], wire(e)["got_seq"]) for e in ev] == [
        ("gap", "33195894526", "33195894700")]
    assert [r.native_symbol for r in m.resubscribe_requests(2.0)] == ["BTC-24SEP21-8000-P"]
    assert m.stats()["symbols"]["deribit:perp:BTC-USD"]["gaps"] == 0


# ============================================================================ Bybit
@pytest.mark.parametrize("name,market", [("bybit/orderbook_linear.json", "perp"), ("bybit/orderbook_spot.json", "spot")])
def test_bybit_snapshot_delta(name: str, market: str) -> None:
    frames = load(name)
    msgs = [bybit_msg(frames[0], market), bybit_msg(frames[1], market)]
    m = BookManager()
    for msg in msgs:
        assert m.on_message(msg, 1.0) == []
    k = m.book("bybit", market, msgs[0].native_symbol)
    assert k.synced and k.last_seq == msgs[1].seq == msgs[0].seq + 1
    assert k.book.top(100) == naive(msgs)
    if market == "perp":
        assert k.book.top(5) == ([("28555.20", "0.677")], [("28555.30", "0.029")])
    else:
        # delta removed 28145.71 (absent) and 28184.33 (absent), added a bid below the best
        assert k.book.top(5) == ([("28162.57", "0.07562"), ("28161.04", "0.177474")], [("28162.58", "0.506829")])


def test_bybit_gap_and_reset_snapshot() -> None:
    frames = load("bybit/orderbook_linear.json")
    m = BookManager(BookConfig(publish_deltas=True))
    m.on_message(bybit_msg(frames[0], "perp"), 1.0)
    m.on_message(bybit_msg(frames[3], "perp"), 1.0)               # level-1 snapshot of BTCUSDT
    skip = bybit_msg(frames[1], "perp")
    skip.seq += 1                                                  # u = previous u + 2
    ev = m.on_message(skip, 2.0)
    # one marker per published stream (tops and deltas are both on)
    assert sorted((e[0], wire(e)["reason"]) for e in ev) == [
        ("md:book:bybit:perp:BTC-USDC", "gap"), ("md:book_delta:bybit:perp:BTC-USDC", "gap")]
    assert m.stats()["symbols"]["bybit:perp:BTC-USDC"]["gaps"] == 1
    assert [r.native_symbol for r in m.resubscribe_requests(2.0)] == ["BTCPERP"]
    assert m.book("bybit", "perp", "BTCUSDT").synced
    # a snapshot resets at any time; u=1 (service restart) says so with a reset marker
    m.on_message(bybit_msg(frames[0], "perp"), 3.0)
    restart = bybit_msg(frames[0], "perp")
    restart.seq = 1
    ev = m.on_message(restart, 3.1)
    assert [e[2] for e in ev] == ["book_gap", "book_gap", "book_delta"]
    assert wire(ev[0])["reason"] == "reset" and wire(ev[2])["snapshot"] == "1"
    k = m.book("bybit", "perp", "BTCPERP")
    assert k.synced and k.last_seq == 1
    d = bybit_msg(frames[1], "perp")
    d.seq = 2
    assert types(m.on_message(d, 3.2)) == ["book_delta"]


# ============================================================================ bounds, queue, garbage
def _spot_diff(native: str, u: int, price: str = "1.0") -> BookMsg:
    return BookMsg("binance", "spot", native.replace("USDT", "-USDT"), native, False, u, [(price, "1")], [],
                   first_seq=u)


def test_buffer_bound_drops_oldest_and_forces_fresh_snapshot() -> None:
    m = BookManager(BookConfig(max_buffer=3, snapshot_rate=0))
    m.on_message(_spot_diff("AAAUSDT", 10), 1.0)
    assert len(m.snapshot_requests(1.0)) == 1                     # released (in flight)
    for u in range(11, 15):
        m.on_message(_spot_diff("AAAUSDT", u), 1.1)
    k = m.book("binance", "spot", "AAAUSDT")
    assert k.buffered == 3
    s = m.stats()
    assert s["buffer_overflow"] == 2 and s["symbols"]["binance:spot:AAA-USDT"]["buffered"] == 3
    # overflow asked once more for a fresh snapshot (once, not per dropped diff)
    assert [r.native_symbol for r in m.pending(SNAPSHOT)] == ["AAAUSDT"]
    assert s["snapshot_queued"] == 2
    # the in-flight answer predates the remaining buffer (first U = 12): refused, ask again
    m.on_message(BookMsg("binance", "spot", "AAA-USDT", "AAAUSDT", True, 10, [], []), 1.2)
    assert not k.synced and m.stats()["stale_snapshots"] == 1
    m.on_message(BookMsg("binance", "spot", "AAA-USDT", "AAAUSDT", True, 11, [("0.5", "1")], []), 1.3)
    assert k.synced and k.last_seq == 14
    assert m.pending(SNAPSHOT) == []                             # the satisfied request left the queue


def test_snapshot_queue_dedup_and_rate_limit() -> None:
    m = BookManager(BookConfig(snapshot_weight=10, snapshot_rate=10.0, snapshot_burst=20))
    natives = ["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT", "EEEUSDT"]
    for n in natives:
        for u in (1, 2, 3):
            m.on_message(_spot_diff(n, u), 0.0)
    # a gap-like storm on one symbol must not queue duplicates
    assert [r.native_symbol for r in m.pending(SNAPSHOT)] == natives
    assert all(r.weight == 10 for r in m.pending(SNAPSHOT))
    assert [r.native_symbol for r in m.snapshot_requests(0.0)] == natives[:2]   # burst 20 = 2 requests
    assert m.snapshot_requests(0.5) == []                                       # 5 tokens
    assert [r.native_symbol for r in m.snapshot_requests(1.0)] == natives[2:3]
    assert [r.native_symbol for r in m.snapshot_requests(3.0)] == natives[3:5]
    s = m.stats()
    assert s["snapshot_queued"] == 5 and s["snapshot_released"] == 5 and s["snapshot_pending"] == 0


def test_snapshot_queue_bounded_and_retried_after_timeout() -> None:
    m = BookManager(BookConfig(max_pending=2, snapshot_rate=0, resync_timeout=10.0))
    for n in ("AAAUSDT", "BBBUSDT", "CCCUSDT"):
        m.on_message(_spot_diff(n, 1), 0.0)
    assert m.stats()["snapshot_queue_full"] == 1 and len(m.pending(SNAPSHOT)) == 2
    assert [r.native_symbol for r in m.snapshot_requests(1.0)] == ["AAAUSDT", "BBBUSDT"]
    # nothing answered: after resync_timeout everything still unsynced is asked again
    assert m.snapshot_requests(5.0) == []
    # (the queue holds 2: the third waits for the next timeout)
    assert sorted(r.native_symbol for r in m.snapshot_requests(11.0)) == ["AAAUSDT", "CCCUSDT"]
    assert m.stats()["snapshot_queue_full"] == 2
    # next timeout: all three are overdue again; the queue takes B (waiting longest) and one more
    assert [r.native_symbol for r in m.snapshot_requests(21.0)] == ["BBBUSDT", "CCCUSDT"]
    assert m.stats()["snapshot_retries"] == 6
    # a failed fetch goes back to the queue
    req = m.snapshot_requests(31.0)[0]
    m.snapshot_failed(req, 31.1)
    assert [r.native_symbol for r in m.pending(SNAPSHOT)] == [req.native_symbol]


def test_resubscribe_requests_paced() -> None:
    m = BookManager(BookConfig(resubscribe_rate=1.0, resubscribe_burst=1))
    for i in range(3):
        m.on_message(BookMsg("bybit", "spot", f"A{i}-USDT", f"A{i}USDT", False, 5, [], []), 0.0)
    assert len(m.resubscribe_requests(0.0)) == 1
    assert m.resubscribe_requests() == []
    assert len(m.resubscribe_requests(1.0)) == 1
    assert len(m.resubscribe_requests(5.0)) == 1


def test_depth_cap_holds_in_manager() -> None:
    f = load("binance_spot/sync_sequence_nknusdt.json")
    m = BookManager(BookConfig(max_depth=10, publish_deltas=True))
    m.on_message(binance_diff(f[2]), 1.0)
    ev = m.on_message(binance_snapshot(f[1], "NKNUSDT"), 1.1)
    k = m.book("binance", "spot", "NKNUSDT")
    assert k.book.depth == (10, 10)
    full = naive([binance_snapshot(f[1], "NKNUSDT"), binance_diff(f[2])])
    assert k.book.top(10) == (full[0][:10], full[1][:10])
    snap_delta = wire(ev[0])
    assert snap_delta["snapshot"] == "1" and len(json.loads(snap_delta["bids"])) == 10
    m.on_message(binance_diff(f[3]), 1.2)
    assert k.book.depth == (10, 10)
    assert m.stats()["trimmed_levels"] > 0


def test_garbage_and_hostile_messages_are_counted() -> None:
    m = BookManager()
    assert m.on_message("not a book", 1.0) == []                                    # type: ignore[arg-type]
    assert m.on_message(BookMsg("binance", "spot", "BTC-USDT", "BTCUSDT", False, "5", [], []), 1.0) == []  # type: ignore[arg-type]
    assert m.on_message(BookMsg("okx", "spot", "BTC-USDT", "BTC-USDT", False, 5, None, []), 1.0) == []  # type: ignore[arg-type]
    assert m.on_message(BookMsg("okx", "spot", "BTC-USDT", "BTC-USDT", False, 5, [], [], prev_seq="4"), 1.0) == []  # type: ignore[arg-type]
    assert m.on_message(BookMsg("binance", "spot", "BTC USDT*", "BTC*", True, 5, [], []), 1.0) == []
    assert m.on_message(BookMsg("nosuch", "spot", "BTC-USDT", "BTCUSDT", True, 5, [], []), 1.0) == []
    s = m.stats()
    assert s["bad_messages"] == 4 and s["rejected"] == 1 and s["unsupported"] == 1 and s["books"] == 0
    # garbage levels inside a good message: skipped and counted, the book stays usable
    m.on_message(BookMsg("bybit", "spot", "BTC-USDT", "BTCUSDT", True, 1,
                         [("100", "1"), ("x", "1"), [None], ("101", "NaN")], [("102", "1"), 5]), 2.0)
    k = m.book("bybit", "spot", "BTCUSDT")
    assert k.synced and k.book.top(5) == ([("100", "1")], [("102", "1")])
    assert m.stats()["bad_levels"] == 4


def test_max_books_bound() -> None:
    m = BookManager(BookConfig(max_books=2))
    for i in range(4):
        m.on_message(BookMsg("bybit", "spot", f"A{i}-USDT", f"A{i}USDT", True, 1, [], []), 1.0)
    assert m.stats()["books"] == 2 and m.stats()["books_full"] == 2


def test_disconnect_marks_and_restarts_every_book() -> None:
    frames = load("bybit/orderbook_spot.json")
    m = BookManager()
    m.on_message(bybit_msg(frames[0], "spot"), 1.0)
    m.on_message(_spot_diff("AAAUSDT", 1), 1.0)                                      # unsynced, queued
    ev = m.on_disconnect(2.0)
    assert [(e[0], wire(e)["reason"], wire(e)["last_seq"]) for e in ev] == [
        ("md:book:bybit:spot:BTC-USDT", "stale", "59438060")]
    assert not m.book("bybit", "spot", "BTCUSDT").synced
    assert m.pending(SNAPSHOT) == [] and m.due_tops(3.0) == []


def test_keeper_classes_and_recovery() -> None:
    assert BinanceSpotKeeper.recovery == BinanceFuturesKeeper.recovery == OkxRestKeeper.recovery == SNAPSHOT
    assert OkxKeeper.recovery == DeribitKeeper.recovery == BybitKeeper.recovery == RESUBSCRIBE
    m = BookManager()
    m.on_message(_spot_diff("AAAUSDT", 1), 1.0)
    m.on_message(BookMsg("binance", "perp", "AAA-USDT", "AAAUSDT", False, 1, [], [], first_seq=1, prev_seq=0), 1.0)
    assert isinstance(m.book("binance", "spot", "AAAUSDT"), BinanceSpotKeeper)
    assert type(m.book("binance", "perp", "AAAUSDT")) is BinanceFuturesKeeper


def test_deltas_rebuild_the_local_book() -> None:
    """A consumer applying the published book_delta events holds the same book as the engine."""
    msgs = [okx_msg(x) for x in load("okx/books.json")[:4]]
    m = BookManager(BookConfig(max_depth=400, publish_deltas=True, publish_tops=False))
    events = [e for msg in msgs for e in m.on_message(msg, 1.0, rx_ns=42)]
    assert types(events) == ["book_delta"] * 4 and {e[4] for e in events} == {42}
    rebuilt = []
    for e in events:
        f = wire(e)
        assert e[0] == "md:book_delta:okx:future:BTC-USD" and f["native_symbol"] == "BTC-USD-220527"
        rebuilt.append(BookMsg("okx", "future", "BTC-USD", "BTC-USD-220527", f["snapshot"] == "1", int(f["seq"]),
                               [tuple(x) for x in json.loads(f["bids"])], [tuple(x) for x in json.loads(f["asks"])]))
    assert json.loads(wire(events[1])["asks"])[0] == ["30249.4", "0"]     # level removals are published
    assert wire(events[3])["ts_exchange"] == "1652459225683"
    assert m.book("okx", "future", "BTC-USD-220527").book.top(10_000) == naive(rebuilt) == naive(msgs)
