"""Phemex spot and perpetuals: listing detection from ``GET /public/products`` (listings only).

Operational rules (fixtures/rest/SOURCES.md §12, research/exchange-quirks.md A.14, A.16, A.17):
- One endpoint, two lists: the current docs (``Public-Spot-API-en.md`` and
  ``Public-Contract-API-en.md``) both name ``GET /public/products``, whose ``data`` carries
  ``products`` (spot rows ``type:"Spot"`` and inverse perpetuals ``type:"Perpetual"``) and
  ``perpProductsV2`` (USDT-settled perpetuals, ``type:"PerpetualV2"``). The older
  ``/exchange/public/cfg/v2/products`` (named by the 2020 spot docs) is not needed.
  The same URL is therefore requested once per market (spot, perp): each market is its own
  snapshot, and a request serves exactly one market.
- Envelope ``{"code":0,"msg":"","data":{...}}``; ``code`` non-zero = error.
- Spot symbols carry an ``s`` prefix (``sBTCUSDT``) with ``baseCurrency``/``quoteCurrency``;
  V2 perps ``BTCUSDT`` with ``baseCurrency``; inverse perps ``BTCUSD`` have no
  ``baseCurrency``: their base is ``contractUnderlyingAssets``, or the settle currency when
  that is the quote (``BTCUSD``: underlying "USD", settle "BTC").
- ``status``: only "Listed" is confirmed; "Delisted" is seen in the docs' summary (A.14); any
  other value is treated as not trading.
- 5,000 requests / 5 min per IP; past that the IP is blocked "in the following 5 minutes"
  (HTTP 403): stop all REST for 300 s. 429 carries ``x-ratelimit-retry-after-*`` headers.
"""

from __future__ import annotations

from typing import Any

from shared.events import DELISTED, HALTED, TRADING, InstrumentInfo
from shared.symbols import canonical, is_safe_native_symbol, split_canonical

from .base import (
    ExchangeAdapter, InstrumentList, InstrumentsFormatError, InstrumentsRequest,
    SAFE_RAW_STATUS_RE, short_repr,
)

STATUS_MAP = {
    "Listed": TRADING,
    "Delisted": DELISTED,
}
#: any other value (pre-listing values are undocumented) is not trading
UNKNOWN_STATUS = HALTED


#: the ``data`` list and the product ``type`` values each market is read from
MARKET_SOURCES: dict[str, tuple[tuple[str, frozenset[str]], ...]] = {
    "spot": (("products", frozenset({"Spot"})),),
    "perp": (("products", frozenset({"Perpetual"})), ("perpProductsV2", frozenset({"PerpetualV2"}))),
}

SPOT_PAGE = "https://phemex.com/spot/trade/{base}{quote}"
PERP_PAGE = "https://phemex.com/futures/trade/{native}"


class PhemexAdapter(ExchangeAdapter):
    name = "phemex"
    market = "spot"
    default_rest_base = "https://api.phemex.com"
    rest_weight_limit = 5000
    rest_weight_window = 300.0
    # documented: past the IP capacity "the user would be blocked in the following 5 minutes"
    rest_ban_statuses = {403: 300.0}
    supports_trades = False

    PRODUCTS_PATH = "/public/products"

    def native_symbol(self, canonical_symbol: str) -> str:
        base, quote = split_canonical(canonical_symbol)
        return f"s{base}{quote}"

    def instruments_requests(self) -> list[InstrumentsRequest]:
        url = self.default_rest_base + self.PRODUCTS_PATH
        return [InstrumentsRequest("spot", url, 1), InstrumentsRequest("perp", url, 1)]

    def parse_instruments(self, market: str, body: Any) -> InstrumentList:
        sources = MARKET_SOURCES.get(market)
        if sources is None:
            raise InstrumentsFormatError(f"phemex has no {market[:16]!r} instruments")
        if not isinstance(body, dict):
            raise InstrumentsFormatError("products body is not an object")
        code = body.get("code")
        if type(code) is not int or code != 0:
            raise InstrumentsFormatError(f"phemex error envelope (code {short_repr(code)}: {short_repr(body.get('msg'))})")
        data = body.get("data")
        if not isinstance(data, dict):
            raise InstrumentsFormatError("products body has no 'data' object")
        out: list[InstrumentInfo] = []
        rejected = 0
        for list_name, types in sources:
            rows = data.get(list_name)
            if not isinstance(rows, list):
                raise InstrumentsFormatError(f"products body has no 'data.{list_name}' list")
            for row in rows:
                if not isinstance(row, dict):
                    rejected += 1
                    continue
                if row.get("type") not in types:
                    continue  # another market's row (or a product type not polled)
                info = self._instrument(market, row)
                if info is None:
                    rejected += 1
                else:
                    out.append(info)
        return InstrumentList(out, rejected)

    def _instrument(self, market: str, row: dict) -> InstrumentInfo | None:
        native, raw_status = row.get("symbol"), row.get("status")
        if not is_safe_native_symbol(native) or not isinstance(raw_status, str):
            return None
        if not SAFE_RAW_STATUS_RE.fullmatch(raw_status):
            return None
        quote_code = row.get("quoteCurrency")
        if market == "spot":
            base_code = row.get("baseCurrency")
        else:
            base_code = _perp_base(row)
        pair = canonical(base_code, quote_code)
        if pair is None:
            return None
        base, quote = split_canonical(pair)
        if market == "spot":
            if native != f"s{base}{quote}":
                return None  # the name and its parts disagree: trust neither
            url = SPOT_PAGE.format(base=base, quote=quote)
        else:
            # perps may carry a multiplier or a letter prefix (e.g. u1000PEPEUSDT): the name must
            # still end with the quote and hold the base before it
            name = native.upper()
            if not name.endswith(quote) or base not in name[: -len(quote)]:
                return None
            url = PERP_PAGE.format(native=native)
        return InstrumentInfo(
            native_symbol=native, symbol=pair, base=base, quote=quote, market=market,
            status=STATUS_MAP.get(raw_status, UNKNOWN_STATUS), raw_status=raw_status, url=url,
        )


def _perp_base(row: dict) -> Any:
    """The base asset of a perpetual row (see the module docstring)."""
    base = row.get("baseCurrency")
    if base is not None:
        return base
    underlying = row.get("contractUnderlyingAssets")
    if isinstance(underlying, str) and underlying != row.get("quoteCurrency"):
        return underlying
    return row.get("settleCurrency")

