"""IPC framing, the event model's keys and fields, symbol validation, backoff, token bucket."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from shared import ipc
from shared.backoff import Backoff
from shared.events import Trade, fields_to_dict, listing_event
from shared.ratelimit import TokenBucket
from shared.symbols import canonical, is_canonical_symbol, is_safe_native_symbol

HOSTILE = ["*", "BTC USDT", "BTC\nUSDT", "{BTC}", "A" * 10_000, "BTC€", "ＢＴＣ", "", "BTC-USDT-", "../x"]


@pytest.mark.parametrize("s", HOSTILE)
def test_hostile_names_are_not_canonical_nor_safe_assets(s: str) -> None:
    assert not is_canonical_symbol(s)
    assert canonical(s, "USDT") is None


def test_canonical_and_native() -> None:
    assert canonical("btc", "usdt") == "BTC-USDT"
    assert canonical("1000SHIB", "USDT") == "1000SHIB-USDT"
    assert is_canonical_symbol("BTC-USDT")
    assert is_safe_native_symbol("BTC-USDT-SWAP") and is_safe_native_symbol("BTCUSDT")
    for bad in ["*", "BTC USDT", "BTC\n", "{x}", "a" * 100, "BTC€"]:
        assert not is_safe_native_symbol(bad)


def test_trade_wire_format() -> None:
    t = Trade("binance", "spot", "BTC-USDT", "BTCUSDT", "42", "83034.29000000", "0.00062000", "sell", 1790649901913, 1790649901920)
    stream, dedup, cls, fields, rx, mono = t.to_wire(123)
    assert mono == "42"  # Binance trade ids grow per symbol: the cross-node dedup id
    assert stream == "md:trade:binance:spot:BTC-USDT"
    assert dedup == "t:binance:spot:BTCUSDT:42"
    assert cls == "trade" and rx == 123
    d = fields_to_dict(fields)
    assert d == {
        "type": "trade", "exchange": "binance", "market": "spot", "symbol": "BTC-USDT",
        "native_symbol": "BTCUSDT", "trade_id": "42", "price": "83034.29000000", "qty": "0.00062000",
        "side": "sell", "ts_exchange": "1790649901913", "ts_receive": "1790649901920",
    }


def test_listing_event_has_node_a_fields() -> None:
    info = {"symbol": "NEW-USDT", "base": "NEW", "quote": "USDT", "market": "spot", "status": "trading",
            "raw_status": "TRADING", "url": "https://www.binance.com/en/trade/NEW_USDT"}
    stream, dedup, cls, fields, _ = listing_event(
        exchange="binance", native_symbol="NEWUSDT", info=info, event="listing",
        source="rest_binance", detected_at=1764590430000, node_id="NODE_A")
    assert stream == "events:raw" and cls == "listing"
    d = fields_to_dict(fields)
    for k in ("source", "source_type", "exchange", "symbol", "event", "raw_text", "url", "detected_at", "node_id"):
        assert k in d
    assert d["source"] == "rest_binance" and d["source_type"] == "exchange"
    assert d["symbol"] == "NEW" and d["pair"] == "NEW-USDT" and d["event"] == "listing"
    assert d["raw_text"] == "New trading pair NEW/USDT available (spot)"
    assert d["detected_at"] == "1764590430000" and d["node_id"] == "NODE_A"
    assert dedup == "l:binance:spot:NEWUSDT:listing:trading"


def test_ipc_roundtrip_async_and_errors() -> None:
    async def go() -> None:
        a, b = socket.socketpair()
        ra, wa = await ipc.open_stream(a)
        rb, wb = await ipc.open_stream(b)
        ipc.write_frame(wa, {"t": "hello", "n": 1})
        ipc.write_frame(wa, {"t": "events", "events": [["s", None, "trade", ["a", "b"], 5]]})
        await wa.drain()
        assert await ipc.read_frame(rb) == {"t": "hello", "n": 1}
        assert (await ipc.read_frame(rb))["events"][0][3] == ["a", "b"]
        # garbage body
        wa.write(ipc.HEADER.pack(3) + b"{x]")
        await wa.drain()
        with pytest.raises(ipc.FrameError):
            await ipc.read_frame(rb)
        # oversized header
        wa.write(ipc.HEADER.pack(ipc.MAX_FRAME + 1))
        await wa.drain()
        with pytest.raises(ipc.FrameError):
            await ipc.read_frame(rb)
        # truncated then EOF
        wa.write(ipc.HEADER.pack(10) + b"{}")
        wa.close()
        with pytest.raises(ipc.FrameError):
            await ipc.read_frame(rb)
        wb.close()

    asyncio.run(go())


def test_ipc_clean_eof_and_blocking_helpers() -> None:
    a, b = socket.socketpair()
    ipc.send_msg(a, {"cmd": "status"})
    assert ipc.recv_msg(b) == {"cmd": "status"}
    a.close()
    assert ipc.recv_msg(b) is None


def test_backoff_doubles_with_jitter_and_caps() -> None:
    b = Backoff(1.0, 60.0, rng=random.Random(7))
    bases = []
    for _ in range(9):
        base = b.base_delay()
        d = b.next_delay()
        assert base / 2 <= d <= base
        bases.append(base)
    assert bases == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    b.reset()
    assert b.base_delay() == 1.0


def test_token_bucket() -> None:
    now = [0.0]
    tb = TokenBucket(10.0, burst=10, clock=lambda: now[0])
    assert sum(tb.try_take() for _ in range(15)) == 10
    assert tb.delay_for() == pytest.approx(0.1)
    now[0] += 0.5
    assert sum(tb.try_take() for _ in range(15)) == 5
    assert TokenBucket(0).try_take() and TokenBucket(0).unlimited


def test_a_trailing_newline_never_passes_validation() -> None:
    from shared.settings import ConfigError, load_settings
    from shared.symbols import NAME_RE, is_safe_native_symbol

    assert NAME_RE.match("binance") and not NAME_RE.match("binance\n")
    assert not is_canonical_symbol("BTC-USDT\n") and not is_safe_native_symbol("BTCUSDT\n")
    assert canonical("BTC\n", "USDT") is None
    with pytest.raises(ConfigError, match="node_id"):
        load_settings(node_id="NODE\n")


def test_log_limiter_holds_back_and_reports_the_count(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from shared.logutil import LogLimiter

    lim = LogLimiter(interval=3600, max_keys=2)
    logger = logging.getLogger("t.limiter")
    with caplog.at_level(logging.WARNING, logger="t.limiter"):
        for _ in range(5):
            lim.warning(logger, "k", "bad frame %d", 1)
    assert [r.getMessage() for r in caplog.records] == ["bad frame 1"]
    assert lim._held["k"] == 4
    assert lim.ok("other") and lim.ok("third")  # a third key clears the table (bounded)
    assert len(lim._last) <= 2
