"""Static facts per exchange: display name and Node A's tier and score weight.

The tier and score weight come from Node A's source table (node-a-listing-monitor.md §1); they
travel on every listing event so the downstream fusion engine can weigh sources. Both are
configurable per exchange (``exchanges.<name>.tier`` / ``score_weight``; None = this table).
Deribit is collected for market data only: it is not a listing source, so it has no tier.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True, slots=True)
class ExchangeFacts:
    name: str
    display_name: str
    #: Node A tier (1 = top exchanges); None = not a listing source
    tier: int | None
    #: Node A score weight (e.g. 1.5 for Binance's "1.5x"); None = not a listing source
    score_weight: float | None

    @property
    def listing_source(self) -> bool:
        return self.tier is not None


EXCHANGES: Mapping[str, ExchangeFacts] = MappingProxyType({f.name: f for f in (
    ExchangeFacts("binance", "Binance", 1, 1.5),
    ExchangeFacts("coinbase", "Coinbase", 1, 1.4),
    ExchangeFacts("kraken", "Kraken", 1, 1.15),
    ExchangeFacts("okx", "OKX", 2, 1.4),
    ExchangeFacts("bybit", "Bybit", 2, 1.2),
    ExchangeFacts("kucoin", "KuCoin", 2, 1.05),
    ExchangeFacts("gate", "Gate.io", 3, 1.1),
    ExchangeFacts("bitget", "Bitget", 3, 1.0),
    ExchangeFacts("htx", "HTX", 3, 0.85),
    ExchangeFacts("mexc", "MEXC", 3, 0.9),
    ExchangeFacts("bingx", "BingX", 3, 1.0),
    ExchangeFacts("phemex", "Phemex", 3, 1.0),
    ExchangeFacts("whitebit", "WhiteBIT", 3, 1.0),
    ExchangeFacts("deribit", "Deribit", None, None),
)})

#: the exchanges Node A watches for listings (13)
LISTING_SOURCES: tuple[str, ...] = tuple(n for n, f in EXCHANGES.items() if f.listing_source)


def exchange_facts(name: str) -> ExchangeFacts | None:
    return EXCHANGES.get(name)


def display_name(name: str) -> str:
    facts = EXCHANGES.get(name)
    return facts.display_name if facts is not None else name


def resolve_tier(name: str, configured: int | None = None) -> int | None:
    """The configured tier, else Node A's, else None (unknown exchange or not a listing source)."""
    if configured is not None:
        return configured
    facts = EXCHANGES.get(name)
    return facts.tier if facts is not None else None


def resolve_score_weight(name: str, configured: float | None = None) -> float | None:
    """The configured score weight, else Node A's, else None."""
    if configured is not None:
        return configured
    facts = EXCHANGES.get(name)
    return facts.score_weight if facts is not None else None


def format_tier(tier: int | None) -> str:
    """Event field form: ``"1"``; ``""`` when there is none."""
    return "" if tier is None else str(int(tier))


def format_score_weight(weight: float | None) -> str:
    """Event field form: ``"1.5"``, ``"1.0"``, ``"0.85"`` (shortest repr); ``""`` when there is none."""
    return "" if weight is None else repr(float(weight))
