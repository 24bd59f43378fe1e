"""Every registered adapter loads, is named as its settings key, and lists real endpoints."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from shared.settings import EXCHANGE_NAMES
from shared.exchanges import LISTING_SOURCES
from workers.exchanges import ADAPTERS, IMPLEMENTED, UnknownExchangeError, adapter_class, get_adapter


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_registered_adapter_loads_and_lists_instrument_endpoints(name: str) -> None:
    cls = adapter_class(name)
    assert cls.name == name and name in EXCHANGE_NAMES
    adapter = get_adapter(name)
    if not adapter.supports_listings:  # Deribit: market data only, not a listing source
        assert name not in LISTING_SOURCES
        return
    assert name in LISTING_SOURCES
    reqs = adapter.instruments_requests()
    assert reqs, "every listing source polls at least one instruments endpoint"
    for req in reqs:
        parts = urlsplit(req.url)
        assert parts.scheme == "https" and parts.hostname and parts.path.startswith("/")
        assert req.market in ("spot", "perp", "future") and req.weight >= 1


def test_unimplemented_and_unknown_names_fail_clearly() -> None:
    missing = [n for n in EXCHANGE_NAMES if n not in IMPLEMENTED]
    for name in missing:
        with pytest.raises(UnknownExchangeError, match="not implemented yet"):
            get_adapter(name)
    with pytest.raises(UnknownExchangeError, match="unknown exchange"):
        get_adapter("nosuch")
