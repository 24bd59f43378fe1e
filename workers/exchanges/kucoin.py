"""KuCoin spot listing detection: ``GET https://api.kucoin.com/api/v2/symbols`` (v1 is deprecated).

Body (fixtures/rest/SOURCES.md 6): ``{"code": "200000", "data": [...]}``; ``code`` is a string and
anything but ``"200000"`` is an error (``"429000"`` = rate limit).

Names: ``symbol`` (``BTC-USDT``; stays the same across a rename, ``name`` changes) and
``baseCurrency``/``quoteCurrency`` (which follow a rename, so only the quote is cross-checked).

Status: there is no status string, only ``enableTrading`` (bool) and the listing schedule:
``tradingStartTime`` (ms, null when none) and the call-auction fields
(``callauctionIsEnabled``, ``callauctionFirst/Second/ThirdStageStartTime``, price floor/ceiling).
research/exchange-quirks.md A.17: trading has opened when ``enableTrading`` is true and now >=
``tradingStartTime``. So:
- ``tradingStartTime`` in the future -> pre_trading (a new listing, call auction or not);
- else ``enableTrading`` true -> trading; false -> halted.
Deciding "in the future" needs the time: the adapter's ``clock`` (epoch ms; tests replace it).
``raw_status`` spells out the fields that decided: ``enableTrading=true``, ``enableTrading=false``,
with ``,callauction`` when the call auction is enabled.

Rate limit: public resource pool 2000 per 30 s per IP (VIP0); this call weighs 4 (KuCoin docs
via ccxt's cost); 429 with code 429000 when exceeded. Quota headers report what REMAINS, not what
is used, so the transport's used-weight header is not set.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

from shared.events import HALTED, PRE_TRADING, TRADING, InstrumentInfo, now_ms
from shared.symbols import canonical, is_safe_native_symbol, split_canonical

from .base import (
    ExchangeAdapter, InstrumentList, InstrumentsFormatError, InstrumentsRequest,
    collect_instruments,
)

TRADE_PAGE = "https://www.kucoin.com/trade/{native}"

#: a millisecond timestamp past year 10000 is not one
_MAX_MS = 253_402_300_800_000


class Kucoin(ExchangeAdapter):
    name = "kucoin"
    market = "spot"
    default_rest_base = "https://api.kucoin.com"
    rest_weight_limit = 2000
    rest_weight_window = 30.0
    supports_trades = False

    SYMBOLS_PATH = "/api/v2/symbols"
    SYMBOLS_WEIGHT = 4

    #: epoch milliseconds now (decides whether ``tradingStartTime`` has passed)
    clock: ClassVar[Callable[[], int]] = staticmethod(now_ms)

    def instruments_requests(self) -> list[InstrumentsRequest]:
        return [InstrumentsRequest("spot", self.default_rest_base + self.SYMBOLS_PATH, self.SYMBOLS_WEIGHT)]

    def parse_instruments(self, market: str, body: Any) -> InstrumentList:
        if not isinstance(body, dict):
            raise InstrumentsFormatError("symbols body is not an object")
        code = body.get("code")
        if code != "200000":
            msg = body.get("msg")
            raise InstrumentsFormatError(
                f"kucoin error {str(code)[:20]}: {msg[:200] if isinstance(msg, str) else ''}")
        data = body.get("data")
        if not isinstance(data, list):
            raise InstrumentsFormatError("symbols body has no 'data' list")
        now = self.clock()
        return collect_instruments(data, lambda row: _instrument(market, row, now))


def _instrument(market: str, row: Any, now: int) -> InstrumentInfo | None:
    if not isinstance(row, dict):
        return None
    native, enabled = row.get("symbol"), row.get("enableTrading")
    start, auction = row.get("tradingStartTime"), row.get("callauctionIsEnabled", False)
    if not is_safe_native_symbol(native) or type(enabled) is not bool:
        return None
    if start is not None and (type(start) is not int or not 0 <= start < _MAX_MS):
        return None
    if auction is not None and type(auction) is not bool:
        return None
    parts = native.split("-")
    if len(parts) != 2:
        return None
    quote_currency = row.get("quoteCurrency")
    if not isinstance(quote_currency, str) or quote_currency.upper() != parts[1].upper():
        return None  # the name and its parts disagree: trust neither
    base_currency = row.get("baseCurrency")
    if not isinstance(base_currency, str) or not base_currency.isascii():
        return None
    pair = canonical(base_currency, quote_currency)
    if pair is None:
        return None
    base, quote = split_canonical(pair)
    if start is not None and now < start:
        status = PRE_TRADING
    else:
        status = TRADING if enabled else HALTED
    raw_status = f"enableTrading={'true' if enabled else 'false'}" + (",callauction" if auction else "")
    return InstrumentInfo(
        native_symbol=native, symbol=pair, base=base, quote=quote, market=market,
        status=status, raw_status=raw_status, url=TRADE_PAGE.format(native=native),
    )
