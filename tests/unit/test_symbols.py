"""What may enter a Redis key name (shared/symbols.py): hostile names never pass, whichever part
they are in, and whatever passes builds a key inside the naming scheme."""

from __future__ import annotations

import random
import re

import pytest

from shared.events import Trade, md_stream_key
from shared.symbols import NAME_RE, canonical, is_canonical_symbol, is_safe_native_symbol

HOSTILE_ASSETS = [
    "*", "BTC*", "BTC USDT", " BTC", "BTC\n", "BTC\r", "BTC\t", "{BTC}", "BTC}", "A" * 10_000, "A" * 21, "",
    "BTC-USDT", "BTC:USDT", "BTC/USDT", "../BTC", "BTC\x00",
    "ÉTH", "ＢＴＣ", "BTC€", "₿",
    # look-alikes that str.upper() turns into ASCII: must not pass for BIT / SOL / FF / SS
    "bıt", "ſol", "ﬀ", "ß",
]

KEY_SCHEME = re.compile(r"md:[a-z0-9_]{1,32}:[a-z0-9_]{1,32}:[a-z0-9_]{1,32}:[A-Z0-9]{1,20}-[A-Z0-9]{1,20}\Z")


@pytest.mark.parametrize("asset", HOSTILE_ASSETS, ids=lambda s: repr(s[:12]))
def test_hostile_asset_codes_never_make_a_canonical_symbol(asset: str) -> None:
    assert canonical(asset, "USDT") is None
    assert canonical("BTC", asset) is None
    assert not is_canonical_symbol(f"{asset}-USDT")


@pytest.mark.parametrize("native", [
    "*", "BTC USDT", "BTCUSDT\n", "{BTC}USDT", "BTC{USDT}", "A" * 65, "A" * 10_000, "-BTC", ".BTC", "",
    "BTCUSDŤ", "ＢＴＣUSDT", "BTC\x00", "BTC*USDT", "BTC?USDT", "BTC[1]",
], ids=lambda s: repr(s[:12]))
def test_hostile_native_symbols_are_not_safe(native: str) -> None:
    assert not is_safe_native_symbol(native)


def test_ascii_asset_codes_in_any_case_are_accepted() -> None:
    assert canonical("btc", "usdt") == "BTC-USDT" and canonical("1000SHIB", "USDT") == "1000SHIB-USDT"
    assert canonical("A" * 20, "Z" * 20) == "A" * 20 + "-" + "Z" * 20


def test_whatever_passes_validation_builds_a_key_inside_the_scheme() -> None:
    """Random names from an alphabet full of hostile characters: every accepted one is safe."""
    rng = random.Random(5)
    alphabet = "ABCxyz019 *{}\n\r\t:-_/.?[]\x00ıſßﬀÉＢ€"
    accepted = 0
    for _ in range(20_000):
        base = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        quote = rng.choice(["USDT", "usdt", "US DT", "ſ", base])
        sym = canonical(base, quote)
        if sym is None:
            continue
        accepted += 1
        key = Trade("binance", "spot", sym, "X", "1", "1", "1", "buy", 0, 0).stream_key()
        assert KEY_SCHEME.match(key) and key.isascii(), key
    assert accepted > 100  # the generator does produce valid names too


def test_key_name_parts_are_validated_names() -> None:
    assert NAME_RE.match("binance") and NAME_RE.match("spot") and NAME_RE.match("kline_1m")
    for bad in ("Binance", "bin ance", "spot\n", "x" * 33, "*", "{a}", "spöt"):
        assert not NAME_RE.match(bad)
    assert md_stream_key("trade", "binance", "spot", "BTC-USDT") == "md:trade:binance:spot:BTC-USDT"
