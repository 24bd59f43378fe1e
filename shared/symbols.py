"""Canonical symbols and what may enter a Redis key name (patterns end in \\Z: no trailing newline).

A canonical symbol is ``BASE-QUOTE`` in upper case (``BTC-USDT``). Anything an exchange sends
is validated before it becomes part of a stream key: hostile names (``*``, spaces, newlines,
braces, 10 kB strings, unicode) are rejected, and the caller counts the drop.
"""

from __future__ import annotations

import re

#: one asset code: letters and digits, 1-20 characters (e.g. 1000SHIB, USDT, BTC)
ASSET_RE = re.compile(r"^[A-Z0-9]{1,20}\Z")
CANONICAL_RE = re.compile(r"^[A-Z0-9]{1,20}-[A-Z0-9]{1,20}\Z")
#: an exchange's own symbol as it may appear in a key or field (e.g. BTCUSDT, BTC-USDT-SWAP, BTC_USDT)
#: an exchange, market or stream-class name as it may appear in a key (binance, spot, trade)
NAME_RE = re.compile(r"^[a-z0-9_]{1,32}\Z")
NATIVE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}\Z")


def is_canonical_symbol(s: object) -> bool:
    return isinstance(s, str) and CANONICAL_RE.fullmatch(s) is not None


def is_safe_native_symbol(s: object) -> bool:
    return isinstance(s, str) and NATIVE_RE.fullmatch(s) is not None and s.isascii()


def canonical(base: str, quote: str) -> str | None:
    """``BASE-QUOTE`` from two asset codes, or None when either is not a safe asset code."""
    if not isinstance(base, str) or not isinstance(quote, str):
        return None
    # ASCII before upper(): "bıt".upper() == "BIT" and "ſol".upper() == "SOL" would let a
    # unicode look-alike pass for a real asset
    if not base.isascii() or not quote.isascii():
        return None
    b, q = base.upper(), quote.upper()
    if ASSET_RE.fullmatch(b) and ASSET_RE.fullmatch(q):
        return f"{b}-{q}"
    return None


def split_canonical(symbol: str) -> tuple[str, str]:
    base, _, quote = symbol.partition("-")
    return base, quote
