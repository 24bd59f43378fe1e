"""Exchange adapters and their registry: exchange name -> (module, class)."""

from __future__ import annotations

import importlib
from typing import Sequence

from shared.settings import EXCHANGE_NAMES

from .base import ExchangeAdapter

#: every implemented adapter; imported lazily so a worker loads only its own exchange's module
ADAPTERS: dict[str, tuple[str, str]] = {
    "binance": ("workers.exchanges.binance", "Binance"),  # spot + USDⓈ-M perps
    "coinbase": ("workers.exchanges.coinbase", "Coinbase"),
    "kraken": ("workers.exchanges.kraken", "Kraken"),
    "okx": ("workers.exchanges.okx", "Okx"),
    "bybit": ("workers.exchanges.bybit", "Bybit"),
    "kucoin": ("workers.exchanges.kucoin", "Kucoin"),
    "gate": ("workers.exchanges.gate", "GateSpot"),
    "bitget": ("workers.exchanges.bitget", "BitgetSpot"),
    "htx": ("workers.exchanges.htx", "HtxSpot"),
    "mexc": ("workers.exchanges.mexc", "MexcSpot"),
    "bingx": ("workers.exchanges.bingx", "BingxSpot"),
    "phemex": ("workers.exchanges.phemex", "PhemexAdapter"),
    "whitebit": ("workers.exchanges.whitebit", "WhitebitAdapter"),
    "deribit": ("workers.exchanges.deribit", "Deribit"),  # market data only (no listings)
}

#: exchanges with a working adapter; the others are known names waiting for one
IMPLEMENTED = frozenset(ADAPTERS)


class UnknownExchangeError(ValueError):
    """No adapter for this exchange (unknown name, or known but not implemented yet)."""


def adapter_class(name: str) -> type[ExchangeAdapter]:
    entry = ADAPTERS.get(name)
    if entry is not None:
        module, cls = entry
        return getattr(importlib.import_module(module), cls)
    if name in EXCHANGE_NAMES:
        raise UnknownExchangeError(
            f"exchange {name!r} is not implemented yet (implemented: {', '.join(sorted(IMPLEMENTED))}); "
            f"disable it with exchanges.{name}.enabled=false")
    raise UnknownExchangeError(f"unknown exchange {name[:40]!r} (known: {', '.join(EXCHANGE_NAMES)})")


def get_adapter(name: str, symbols: Sequence[str] = ()) -> ExchangeAdapter:
    """An adapter instance for ``name`` and the configured canonical ``symbols``.

    Raises :class:`UnknownExchangeError` with one clear line for exchanges without an adapter.
    """
    return adapter_class(name)(symbols)
