"""Exchange adapters and their registry."""

from __future__ import annotations

from typing import Sequence

from shared.settings import EXCHANGE_NAMES

from .base import ExchangeAdapter

#: exchanges with a working adapter; the others are known names waiting for one
IMPLEMENTED = {"binance"}


class UnknownExchangeError(ValueError):
    """No adapter for this exchange (unknown name, or known but not implemented yet)."""


def adapter_class(name: str) -> type[ExchangeAdapter]:
    if name == "binance":
        from .binance import BinanceSpot

        return BinanceSpot
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
