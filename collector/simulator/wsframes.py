"""WebSocket frame bytes and the pre-formatted trade tape.

The simulator writes server frames (unmasked, uncompressed) straight to the transport instead of
going through ``WebSocketResponse.send_str``: one ``transport.write`` per batch is what makes the
firehose fast, and it lets trade frames, malformed frames and pings interleave in one byte stream.
aiohttp's own writer writes whole frames synchronously too, so frames never interleave mid-frame.
"""

from __future__ import annotations

import json
import random

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final (FIN) server frame: no mask, no compression."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big") + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload


def text_frame(payload: bytes) -> bytes:
    return ws_frame(OP_TEXT, payload)


def _header_str(length: int) -> str:
    """Text-frame header as a latin-1 string (so a whole batch is encoded in one go)."""
    if length < 126:
        return "\x81" + chr(length)
    if length < 65536:
        return "\x81\x7e" + chr(length >> 8) + chr(length & 0xFF)
    return "\x81\x7f" + "".join(chr(b) for b in length.to_bytes(8, "big"))


def _fmt_step(value: float, step: float) -> str:
    """``value`` rounded to ``step`` and printed with 8 decimals, like Binance's strings."""
    if step > 0:
        value = round(value / step) * step
    return f"{value:.8f}"


class TradeTape:
    """Prices, quantities and sides for one symbol, formatted once and reused cyclically.

    Generated trades take the next tape entry; only the ids and timestamps are formatted per
    trade. Keys and their order match Binance's current ``<symbol>@trade`` payload:
    ``{"e","E","s","t","p","q","T","m","M"}`` (no ``b``/``a`` order ids since 2024-06).
    """

    SIZE = 4096  # power of two: index with a mask

    def __init__(self, symbol: str, stream: str, price: float, tick: float, step: float,
                 rng: random.Random) -> None:
        # json.dumps escapes quotes/control chars and keeps the output ASCII, so a hostile
        # symbol cannot break the JSON or the latin-1 batch encoding.
        self.symbol_json = json.dumps(symbol)
        self.combined_prefix = '{"stream":' + json.dumps(stream) + ',"data":'
        self.prices: list[float] = []
        self.mids: list[str] = []   # ',"p":"…","q":"…","T":'
        self.tails: list[str] = []  # ',"m":true,"M":true}'
        p = price
        min_qty = step if step > 0 else 0.00001
        for _ in range(self.SIZE):
            # small random walk, kept within ±20 % of the start so the tape stays plausible
            p = min(max(p * (1.0 + rng.gauss(0.0, 0.0004)), price * 0.8), price * 1.2)
            if tick > 0:
                p = max(round(p / tick) * tick, tick)
            qty = max(min_qty, rng.expovariate(1.0) * min_qty * rng.choice((10, 100, 1000)))
            self.prices.append(p)
            self.mids.append(f',"p":"{_fmt_step(p, tick)}","q":"{_fmt_step(qty, step)}","T":')
            self.tails.append(',"m":true,"M":true}' if rng.random() < 0.5 else ',"m":false,"M":true}')
        self.cursor = 0

    @property
    def last_price(self) -> float:
        return self.prices[(self.cursor - 1) & (self.SIZE - 1)]

    def encode(self, first_id: int, count: int, now_ms: int, raw: bool, combined: bool
               ) -> tuple[bytes | None, bytes | None]:
        """WebSocket text frames for trades ``first_id .. first_id+count-1``.

        Returns (raw-stream bytes, combined-stream bytes); each is None unless asked for.
        """
        head = '{"e":"trade","E":' + str(now_ms) + ',"s":' + self.symbol_json + ',"t":'
        t_str = str(now_ms)
        mids, tails = self.mids, self.tails
        mask = self.SIZE - 1
        idx = self.cursor
        prefix = self.combined_prefix
        raw_parts: list[str] = []
        comb_parts: list[str] = []
        raw_append, comb_append = raw_parts.append, comb_parts.append
        for tid in range(first_id, first_id + count):
            j = idx & mask
            idx += 1
            payload = head + str(tid) + mids[j] + t_str + tails[j]
            if raw:
                raw_append(_header_str(len(payload)))
                raw_append(payload)
            if combined:
                wrapped = prefix + payload + "}"
                comb_append(_header_str(len(wrapped)))
                comb_append(wrapped)
        self.cursor = idx & mask
        return (
            "".join(raw_parts).encode("latin-1") if raw else None,
            "".join(comb_parts).encode("latin-1") if combined else None,
        )
