"""Lua scripts that make the publisher's writes idempotent (issue 5 points 1 and 4).

``APPLY_BATCH`` applies one *part* of a worker batch atomically, the way Kafka's idempotent
producer does:

- a per-producer watermark hash ``pub:wm:{node_id}:{producer}`` holds, per *lane* (``""`` for
  ungated classes, the class name for rate-limited ones), the last applied part position
  ``seq * 65536 + index``; a part at or below it was applied before (a re-send after a lost ack or
  a publisher restart) and is skipped whole;
- each event then goes through its cross-node dedup mode:
  ``m`` (natural monotonic id): XADDed only when its id is above the stream's high-watermark key
  ``pub:hwm:{stream}`` (two HA nodes writing the same trades put each in the stream once);
  ``k`` (keyed): XADDed only when ``SET pub:dd:{dedup_key} NX EX ttl`` succeeds (listing events
  sent by workers); ``-``: XADDed (the publisher's in-memory window deduplicated it already);
- the stream high-watermarks touched and the producer watermark are written in the same script,
  so "events written" and "batch recorded" can never disagree.

Reply: ``[0]`` = the part was applied before (nothing done), else ``[1, r1, r2, ...]`` with one
``ri`` per event: the new entry's ID, ``0`` for a duplicate, or an error (that event only; e.g.
WRONGTYPE). Errors of single XADDs are caught (``redis.pcall``) so one bad stream key cannot
abort the part half-way. The ``#!lua`` shebang makes Redis refuse the whole script up front when
it is out of memory or a read-only replica, rather than after some writes.

``LISTING_EVENT`` is the cross-node check of listing transactions: it XADDs a listing event only
when ``known:pairs:{exchange}`` does not already hold the event's status for that symbol (another
node, or this one before a restart, recorded the same transition). It runs inside the listing
MULTI/EXEC, before the state commands; it is sent with EVAL (rare, and a NOSCRIPT inside a
transaction would let the state change through without its event).

Ids are compared as decimal strings (length, then bytes), so ids beyond 2^53 stay exact.
"""

from __future__ import annotations

import hashlib

import hiredis

#: part position = seq * PART_SLOTS + index (index < PART_SLOTS); fits a Lua double exactly for
#: seq < 2^37
PART_SLOTS = 65536
MAX_SEQ = (1 << 37) - 1

#: per-event modes (see the module docstring)
MODE_MONO = "m"
MODE_KEYED = "k"
MODE_PLAIN = "-"

WATERMARK_PREFIX = "pub:wm:"
HWM_PREFIX = "pub:hwm:"
KEYED_PREFIX = "pub:dd:"

APPLY_BATCH = r"""#!lua
local lane = ARGV[1]
local pos = tonumber(ARGV[2])
local cur = redis.call('HGET', KEYS[1], lane)
if cur and tonumber(cur) >= pos then
  return {0}
end
local hwm_ttl = ARGV[4]
local key_ttl = ARGV[5]
local out = {1}
local hwms = {}
local dirty = {}
local k = 2
local a = 6
local n = #ARGV
while a <= n do
  local mode = ARGV[a]
  local id = ARGV[a + 1]
  local maxlen = ARGV[a + 2]
  local nf = tonumber(ARGV[a + 3])
  local stream = KEYS[k]
  k = k + 1
  local write = true
  local hk = nil
  if mode == 'm' then
    hk = KEYS[k]
    k = k + 1
    local h = hwms[hk]
    if h == nil then
      h = redis.call('GET', hk)
      hwms[hk] = h
    end
    if h and (#id < #h or (#id == #h and id <= h)) then
      write = false
    end
  elseif mode == 'k' then
    local dk = KEYS[k]
    k = k + 1
    if not redis.call('SET', dk, '1', 'NX', 'EX', key_ttl) then
      write = false
    end
  end
  if write then
    local r = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, a + 4, a + 3 + nf))
    if hk and type(r) == 'string' then
      hwms[hk] = id
      dirty[hk] = true
    end
    out[#out + 1] = r
  else
    out[#out + 1] = 0
  end
  a = a + 4 + nf
end
for hk2, _ in pairs(dirty) do
  redis.call('SET', hk2, hwms[hk2], 'EX', hwm_ttl)
end
redis.call('HSET', KEYS[1], lane, ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return out
"""

LISTING_EVENT = r"""#!lua
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  return 0
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
"""


def sha1(src: str) -> str:
    return hashlib.sha1(src.encode()).hexdigest()


APPLY_BATCH_SHA = sha1(APPLY_BATCH)
LISTING_EVENT_SHA = sha1(LISTING_EVENT)

#: sent on every (re)connection of the data connection, so EVALSHA finds the script
LOAD_COMMANDS: list[tuple] = [("SCRIPT", "LOAD", APPLY_BATCH)]


def part_position(seq: int, index: int) -> str:
    return str(seq * PART_SLOTS + index)


def normalize_mono_id(value: object) -> str | None:
    """A monotonic id as a canonical decimal string (no sign, no leading zeros), or None when it
    is not a non-negative integer (then the event is malformed)."""
    if type(value) is int:
        return str(value) if value >= 0 else None
    if type(value) is str and 0 < len(value) <= 40 and value.isascii() and value.isdigit():
        return value.lstrip("0") or "0"
    return None


def pack_listing_event(stream: str, pairs_key: str, field: str, status: str, maxlen: str,
                       fields: list[str]) -> tuple:
    """The EVAL command (a tuple for ``hiredis.pack_command``) of one listing event."""
    return ("EVAL", LISTING_EVENT, "2", stream, pairs_key, field, status, maxlen, *fields)


def pack_apply(wm_key: str, lane: str, position: str, wm_ttl: str, hwm_ttl: str, key_ttl: str,
               keys: list[str], args: list[str]) -> bytes:
    """One EVALSHA of APPLY_BATCH; ``keys``/``args`` are the per-event parts built by the caller."""
    return hiredis.pack_command(("EVALSHA", APPLY_BATCH_SHA, str(len(keys) + 1), wm_key, *keys,
                                 lane, position, wm_ttl, hwm_ttl, key_ttl, *args))
