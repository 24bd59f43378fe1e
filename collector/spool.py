"""Append-only disk spool: where the publisher puts events while Redis is down for longer than the
in-memory buffer lasts, and replays them from, oldest first, when Redis returns.

On disk (one directory, owned by one process: an ``flock`` on ``LOCK``)::

    0000000000000001.seg    segment: 8-byte magic, then records (never spans two segments)
    0000000000000001.count  sidecar written when a segment is sealed: record count + size (+ CRC)
    cursor                  replay position acknowledged so far: segment id + offset (+ CRC)
    LOCK

A record is ``u32 length | u32 crc32(length bytes + payload) | payload`` (little-endian). The
length is covered by the CRC so a damaged length is caught too; a length above the record limit
is corrupt at once. Payloads are opaque bytes (for the publisher: :func:`pack_part`).

Crash safety: appends only ever go to a fresh segment created by this process, so after a crash
only the tail of the newest segment can be torn. Opening the spool validates the newest segment
(and any segment without a valid sidecar) record by record and truncates it after the last good
record (counted in ``corrupt_records`` / ``corrupt_bytes``); the records before it are kept.
Corruption found later while replaying (bit rot in an older segment) is counted, the rest of that
segment is skipped, replay goes on with the next one; it never raises.

Replay is at-least-once: :meth:`Spool.read` hands out records after the read position,
:meth:`Spool.ack` moves the acknowledged cursor; the cursor file is written (tmp + rename) by the
I/O thread soon after, so a crash re-yields at most the records acknowledged since the last cursor
write plus the unacknowledged ones. Segments behind the persisted cursor are deleted.

Threading, and why: ONE dedicated I/O thread owns every file mutation (writes, fsyncs, segment
roll/seal/delete, cursor file). ``append`` on the event loop only encodes the record (header +
CRC32, ~1 us), checks the size bound and puts it on an in-memory queue (bounded by the same byte
bound) under a lock held for microseconds; the I/O thread swaps the whole queue out in O(1) and
then only joins and writes (``write(2)`` and ``fsync`` release the GIL). ``asyncio.to_thread(fsync)`` alone would not do: a plain ``write(2)`` can also block
for a long time when the kernel throttles dirty pages on a slow or full disk, and group commit
(one fsync for every record queued meanwhile) falls out naturally from a single writer thread.
Reads for replay run in the caller's thread (``aread`` uses ``asyncio.to_thread``) on their own
file descriptor, only up to what the I/O thread has finished writing; there is one reader.

Durability: every accepted record gets a sequence number (per process, from 1). It is *durable*
once written and, per policy, fsynced: ``always`` (fsync before it counts), ``interval`` (at the
next periodic fsync), ``never`` (once written to the OS: survives a process crash, not a power
loss). :meth:`Spool.wait_durable` tells the caller when (True) or that the record was lost to a
write error (False; counted in ``dropped_events``).

Bounds: on-disk bytes + queued bytes never exceed ``max_bytes`` (a record is refused and counted
in ``dropped_events`` when it would); a write error (ENOSPC, EIO, ...) drops the records being
written and those queued (counted), then appends are refused for ``ERROR_BACKOFF`` seconds.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
import sys
import threading
import time
import zlib
from array import array
from collections import deque
from pathlib import Path
from typing import Iterable, Literal

log = logging.getLogger("collector.spool")

FsyncPolicy = Literal["always", "interval", "never"]

SEG_MAGIC = b"CSPOOL\x00\x01"
SEG_HDR = len(SEG_MAGIC)
REC_HDR = struct.Struct("<II")  # payload length, crc32 over (length bytes + payload)
_LEN = struct.Struct("<I")
_CURSOR = struct.Struct("<QQI")  # segment id, offset, crc32 of the first 16 bytes
_COUNT = struct.Struct("<QQI")   # records, size, crc32 of the first 16 bytes
#: records larger than this are refused (besides fitting in a segment)
MAX_RECORD = 64 * 1024 * 1024
#: after a write error, appends are refused for this long (the disk may free up), seconds
ERROR_BACKOFF = 1.0
#: the I/O thread writes at most this much per write call
WRITE_CHUNK = 4 * 1024 * 1024
#: payloads from this size on get their CRC computed in the I/O thread
_THREAD_CRC_MIN = 64 * 1024
#: buffers per writev call (IOV_MAX is 1024 on Linux)
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
#: replay reads at least this much per pread
READ_CHUNK = 1024 * 1024
_SCAN_CHUNK = 4 * 1024 * 1024
#: cursor file rewrite interval for fsync policies always/never, seconds
CURSOR_INTERVAL = 0.1


class SpoolError(Exception):
    """The spool cannot be used (directory not writable, in use by another process...); one line."""


class _Segment:
    __slots__ = ("seg_id", "path", "size", "records", "sealed")

    def __init__(self, seg_id: int, path: Path, size: int, records: int, sealed: bool) -> None:
        self.seg_id = seg_id
        self.path = path
        self.size = size          # bytes of complete records written, plus the header
        self.records = records    # records in the file
        self.sealed = sealed      # no more appends (all segments found at open are sealed)


def _seg_name(seg_id: int) -> str:
    return f"{seg_id:016d}.seg"


def _crc_record(payload: bytes | memoryview, n: int) -> int:
    return zlib.crc32(payload, zlib.crc32(_LEN.pack(n)))


def encode_record(payload: bytes) -> bytes:
    """One record as written on disk (header + payload)."""
    n = len(payload)
    return REC_HDR.pack(n, _crc_record(payload, n)) + payload


def _scan(fd: int, start: int, file_size: int, max_record: int) -> tuple[int, list[int]]:
    """Validate records from ``start``: (offset after the last good record, start offsets of the
    good records). Stops at the first torn or corrupt record (or the end)."""
    offsets: list[int] = []
    off = start
    buf = b""
    buf_at = start
    while off < file_size:
        need = min(file_size - off, max(_SCAN_CHUNK, REC_HDR.size))
        if off + REC_HDR.size > file_size:
            break
        if off - buf_at + REC_HDR.size > len(buf):
            buf, buf_at = os.pread(fd, need, off), off
        n, crc = REC_HDR.unpack_from(buf, off - buf_at)
        end = off + REC_HDR.size + n
        if n > max_record or end > file_size:
            break
        if end - buf_at > len(buf):
            buf, buf_at = os.pread(fd, max(need, end - off), off), off
            if len(buf) < end - off:
                break
        p0 = off - buf_at + REC_HDR.size
        if _crc_record(memoryview(buf)[p0:p0 + n], n) != crc:
            break
        offsets.append(off)
        off = end
    return off, offsets


class Spool:
    """An append-only, size-bounded, segmented disk spool (see the module docstring).

    Call :meth:`open` first (it may raise :class:`SpoolError`) and :meth:`close` at the end.
    ``append``/``ack``/``stats`` never do file I/O; ``read`` does (use ``aread`` on a loop).
    """

    def __init__(self, directory: str | Path, *, max_bytes: int = 1024 ** 3,
                 segment_bytes: int = 16 * 1024 ** 2, fsync: FsyncPolicy = "interval",
                 fsync_interval_ms: int = 200) -> None:
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be always, interval or never, not {fsync!r}")
        if segment_bytes < SEG_HDR + REC_HDR.size + 1:
            raise ValueError("segment_bytes too small")
        if max_bytes < segment_bytes:
            raise ValueError("max_bytes must be at least segment_bytes")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.fsync_interval = fsync_interval_ms / 1000.0
        #: the cursor file is rewritten at most this often (a crash re-yields the records acked
        #: since: replay is at-least-once anyway), and on close
        self.cursor_interval = self.fsync_interval if fsync == "interval" else CURSOR_INTERVAL
        self._last_cursor_write = 0.0
        self.max_record = min(MAX_RECORD, segment_bytes - SEG_HDR - REC_HDR.size)

        self._cond = threading.Condition(threading.Lock())
        self._segments: dict[int, _Segment] = {}   # by id, ascending (insertion order)
        self._next_seg_id = 1
        self._active: _Segment | None = None        # the segment the I/O thread appends to
        self._active_fd = -1
        # (seq, record size, header or None (made by the I/O thread), payload)
        self._queue: deque[tuple[int, int, bytes | None, bytes]] = deque()
        self._queued_bytes = 0
        self._disk_bytes = 0
        self._pending = 0          # records accepted and not yet acknowledged (incl. queued)
        self._last_seq = 0         # last accepted sequence number
        self._decided_seq = 0      # every seq <= this is durable or lost
        self._written_seq = 0      # written to the OS, maybe not fsynced yet
        self._lost: deque[tuple[int, int]] = deque(maxlen=1024)  # recent lost seq ranges
        self._dirty = False        # written since the last fsync
        self._last_fsync = time.monotonic()
        self._force_sync = False
        self._error_until = 0.0
        self._closing = False
        self._opened = False
        self._thread: threading.Thread | None = None
        self._lock_fd = -1

        # acknowledged cursor (in memory) and the one last written to the cursor file
        self._cursor: tuple[int, int] = (1, SEG_HDR)
        self._cursor_written: tuple[int, int] | None = None
        # reader state (one reader)
        self._read_pos: tuple[int, int] = (1, SEG_HDR)
        self._read_index = 0       # records before _read_pos in its segment
        self._unacked: deque[tuple[int, int, int]] = deque()  # (seg, end offset, index after)
        self._read_fd = -1
        self._read_fd_seg = -1

        # asyncio waiters for durability: (seq, future), in seq order
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()
        self._notify_pending = False

        # counters
        self.appended = 0
        self.dropped_full = 0       # refused: the size bound was reached
        self.dropped_oversized = 0  # refused: one record larger than max_record
        self.dropped_error = 0      # refused during an error backoff, or lost in a failed write
        self.dropped_closed = 0     # refused: spool not open / closing
        self.write_errors = 0
        self.corrupt_records = 0    # torn/corrupt records found (at open or while replaying)
        self.corrupt_bytes = 0      # bytes discarded with them
        self.replayed = 0           # records handed out by read() (re-reads after rewind included)
        self.acked = 0
        self.fsyncs = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ open / close
    def open(self) -> None:
        """Create or resume the spool directory; start the I/O thread. Raises SpoolError."""
        if self._opened:
            return
        if self._thread is not None:
            raise SpoolError("a closed Spool cannot be opened again; make a new one")
        d = self.directory
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(d / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"spool dir {d}: cannot create or write ({exc.strerror or exc})") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SpoolError(f"spool dir {d}: in use by another process") from None
        try:
            self._recover()
            if not os.access(d, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "directory not writable")
        except OSError as exc:
            self._release_lock()
            raise SpoolError(f"spool dir {d}: cannot open ({exc.strerror or exc})") from None
        self._opened = True
        self._thread = threading.Thread(target=self._io_thread, name="spool-io", daemon=True)
        self._thread.start()

    def _recover(self) -> None:
        """Rebuild the segment list, validate what may be torn, load the cursor."""
        d = self.directory
        try:
            (d / "cursor.tmp").unlink()
        except FileNotFoundError:
            pass
        ids = sorted(int(p.name[:-4]) for p in d.glob("*.seg") if p.name[:-4].isdigit())
        cursor = self._load_cursor()
        if cursor is not None and ids and cursor[0] > ids[-1]:
            cursor = None  # a cursor beyond every segment: nothing is pending
            for seg_id in ids:
                self._remove_files(seg_id)
            ids = []
        for seg_id in ids:
            if cursor is not None and seg_id < cursor[0]:
                self._remove_files(seg_id)  # consumed; its deletion was cut short
                continue
            seg = self._recover_segment(seg_id, last=(seg_id == ids[-1]))
            if seg is not None:
                self._segments[seg_id] = seg
                self._disk_bytes += seg.size
        if ids:
            self._next_seg_id = ids[-1] + 1
        first = next(iter(self._segments.values()), None)
        if first is None:
            self._cursor = (self._next_seg_id, SEG_HDR)
            index = 0
        elif cursor is None or cursor[0] != first.seg_id:
            self._cursor = (first.seg_id, SEG_HDR)
            index = 0
        else:
            index = self._index_at(first, cursor[1])
            self._cursor = (first.seg_id, cursor[1] if index >= 0 else SEG_HDR)
            index = max(index, 0)
        self._cursor_written = cursor
        self._read_pos = self._cursor
        self._read_index = index
        self._pending = sum(s.records for s in self._segments.values()) - index
        if self._segments:
            log.info("spool %s: resuming %d records in %d segments (%d bytes)", d, self._pending,
                     len(self._segments), self._disk_bytes)

    def _recover_segment(self, seg_id: int, last: bool) -> _Segment | None:
        path = self.directory / _seg_name(seg_id)
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < SEG_HDR or os.pread(fd, SEG_HDR, 0) != SEG_MAGIC:
                # a crash right after creating it, or not our file: nothing usable
                if size:
                    self._count_corrupt(size, f"segment {path.name}: bad header")
                os.close(fd)
                fd = -1
                self._remove_files(seg_id)
                return None
            if not last:
                known = self._load_count(seg_id, size)
                if known is not None:
                    return _Segment(seg_id, path, size, known, sealed=True)
            end, offsets = _scan(fd, SEG_HDR, size, self.max_record)
            if end < size:
                self._count_corrupt(size - end, f"segment {path.name}: torn or corrupt record at {end}")
                os.ftruncate(fd, end)
                os.fsync(fd)
            self._write_count(seg_id, len(offsets), end)
            return _Segment(seg_id, path, end, len(offsets), sealed=True)
        finally:
            if fd >= 0:
                os.close(fd)

    def _index_at(self, seg: _Segment, offset: int) -> int:
        """Records before ``offset`` in ``seg``; -1 when it is not a record boundary."""
        if offset == SEG_HDR:
            return 0
        fd = os.open(seg.path, os.O_RDONLY)
        try:
            end, offsets = _scan(fd, SEG_HDR, min(offset, seg.size), self.max_record)
        finally:
            os.close(fd)
        return len(offsets) if end == offset else -1

    def _count_corrupt(self, nbytes: int, what: str) -> None:
        self.corrupt_records += 1
        self.corrupt_bytes += nbytes
        log.warning("spool %s: %s; %d bytes discarded", self.directory, what, nbytes)

    def _load_cursor(self) -> tuple[int, int] | None:
        try:
            raw = (self.directory / "cursor").read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) != _CURSOR.size:
            return None
        seg_id, off, crc = _CURSOR.unpack(raw)
        return (seg_id, off) if zlib.crc32(raw[:16]) == crc else None

    def _load_count(self, seg_id: int, size: int) -> int | None:
        try:
            raw = (self.directory / f"{seg_id:016d}.count").read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) != _COUNT.size:
            return None
        records, csize, crc = _COUNT.unpack(raw)
        return records if zlib.crc32(raw[:16]) == crc and csize == size else None

    def _write_count(self, seg_id: int, records: int, size: int) -> None:
        head = struct.pack("<QQ", records, size)
        (self.directory / f"{seg_id:016d}.count").write_bytes(head + struct.pack("<I", zlib.crc32(head)))

    def _remove_files(self, seg_id: int) -> None:
        for name in (_seg_name(seg_id), f"{seg_id:016d}.count"):
            try:
                (self.directory / name).unlink()
            except FileNotFoundError:
                pass

    def close(self, timeout: float = 10.0) -> None:
        """Write and fsync what is queued (unless fsync=never), persist the cursor, stop. Blocking."""
        if not self._opened:
            return
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
        self._opened = False
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = -1

    # ------------------------------------------------------------------ append (event loop)
    def append(self, payload: bytes) -> int | None:
        """Queue one record for writing; its sequence number, or None when refused (counted in
        ``dropped_events``): bound reached, record too large, write-error backoff, not open."""
        size = len(payload)
        if size > self.max_record:
            with self._cond:
                self.dropped_oversized += 1
            return None
        # small records: the header (CRC) is made here, so the I/O thread holds the GIL only
        # briefly (writev) and the event loop is not kept waiting for it; large ones: in the I/O
        # thread, where zlib.crc32 of a big buffer runs without the GIL. The payload is never copied.
        head = REC_HDR.pack(size, zlib.crc32(payload, zlib.crc32(_LEN.pack(size)))) \
            if size < _THREAD_CRC_MIN else None
        n = size + REC_HDR.size
        with self._cond:
            if not self._opened or self._closing:
                self.dropped_closed += 1
                return None
            if self._disk_bytes + self._queued_bytes + n > self.max_bytes - SEG_HDR:
                self.dropped_full += 1
                return None
            if self._error_until and time.monotonic() < self._error_until:
                self.dropped_error += 1
                return None
            self._last_seq += 1
            seq = self._last_seq
            self._queue.append((seq, n, head, payload))
            self._queued_bytes += n
            self._pending += 1
            self.appended += 1
            if len(self._queue) == 1:
                self._cond.notify()
            return seq

    def append_many(self, payloads: Iterable[bytes]) -> tuple[int, int]:
        """Append in order; returns (accepted, refused). Once one is refused the rest are
        refused too (counted), so what is spooled is always a prefix: order is never broken."""
        accepted = refused = 0
        for p in payloads:
            if refused or self.append(p) is None:
                if refused:
                    with self._cond:
                        self.dropped_full += 1  # the rest of a refused batch
                refused += 1
            else:
                accepted += 1
        return accepted, refused

    # ------------------------------------------------------------------ durability
    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def durable_seq(self) -> int:
        """Every record with seq <= this is durable (per policy) or was lost (counted)."""
        return self._decided_seq

    async def wait_durable(self, seq: int) -> bool:
        """True once record ``seq`` is durable; False if it was lost to a write error."""
        with self._cond:
            if seq <= self._decided_seq:
                return not self._was_lost(seq)
            self._loop = asyncio.get_running_loop()  # the loop to settle the future on
            fut = self._loop.create_future()
            self._waiters.append((seq, fut))
        return await fut

    def _was_lost(self, seq: int) -> bool:
        return any(a <= seq <= b for a, b in self._lost)

    def _resolve_waiters(self) -> None:
        """On the loop: settle the futures of decided records."""
        with self._cond:
            self._notify_pending = False
            decided = self._decided_seq
            ready = []
            while self._waiters and self._waiters[0][0] <= decided:
                seq, fut = self._waiters.popleft()
                ready.append((fut, not self._was_lost(seq)))
        for fut, ok in ready:
            if not fut.done():
                fut.set_result(ok)

    def sync(self, timeout: float = 10.0) -> bool:
        """Blocking: write and fsync everything appended so far. True when done in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._last_seq
            self._force_sync = True
            self._cond.notify_all()
            while self._decided_seq < target or self._force_sync:
                left = deadline - time.monotonic()
                if left <= 0 or not (self._thread and self._thread.is_alive()):
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    # ------------------------------------------------------------------ replay (one reader)
    def read(self, max_records: int = 1000, max_bytes: int = 4 * 1024 * 1024) -> list[bytes]:
        """The next records after the read position, oldest first (at most ``max_records``, and
        about ``max_bytes``; always at least one if one is available). Blocking file I/O."""
        out: list[bytes] = []
        nbytes = 0
        while len(out) < max_records and nbytes < max_bytes:
            with self._cond:
                seg_id, off = self._read_pos
                seg = self._segments.get(seg_id)
                if seg is None:
                    later = [s for s in self._segments if s > seg_id]
                    if not later:
                        break
                    self._read_pos = (later[0], SEG_HDR)
                    self._read_index = 0
                    continue
                limit, sealed, path, seg_records = seg.size, seg.sealed, seg.path, seg.records
            if off >= limit:
                if not sealed:
                    break  # caught up with the writer
                with self._cond:
                    self._read_pos = (seg_id + 1, SEG_HDR)
                    self._read_index = 0
                continue
            fd = self._reader_fd(seg_id, path)
            want = min(limit - off, max(READ_CHUNK, max_bytes - nbytes))
            buf = os.pread(fd, want, off)
            pos = 0
            got = 0
            bad = False
            while pos + REC_HDR.size <= len(buf) and len(out) < max_records and nbytes < max_bytes:
                n, crc = REC_HDR.unpack_from(buf, pos)
                end = pos + REC_HDR.size + n
                if n > self.max_record or off + end > limit:
                    bad = True
                    break
                if end > len(buf):
                    if pos == 0:  # one record larger than the chunk: read it whole
                        buf = os.pread(fd, end, off)
                        if len(buf) < end:
                            bad = True
                            break
                    else:
                        break
                payload = buf[pos + REC_HDR.size:end]
                if _crc_record(payload, n) != crc:
                    bad = True
                    break
                out.append(payload)
                nbytes += n
                got += 1
                self._unacked.append((seg_id, off + end, self._read_index + got))
                pos = end
            if not bad and pos == 0 and off + REC_HDR.size > limit:
                bad = True  # a few stray bytes at the end of a segment
            with self._cond:
                self._read_index += got
                self._read_pos = (seg_id, off + pos)
                self.replayed += got
                if bad:
                    # count it, skip the rest of this segment (to what is written of the active one)
                    self._count_corrupt(limit - (off + pos), f"segment {path.name}: corrupt record at {off + pos}")
                    lost = max(seg_records - self._read_index, 1 if sealed else 0)
                    self._pending -= min(lost, self._pending - len(self._unacked))
                    self._read_index += lost
                    self._read_pos = (seg_id, limit)
                    if not self._unacked:
                        self._cursor = self._read_pos
                        self._cond.notify()
            if got == 0 and not bad:
                break
        return out

    async def aread(self, max_records: int = 1000, max_bytes: int = 4 * 1024 * 1024) -> list[bytes]:
        """:meth:`read` in a worker thread (never blocks the event loop on disk)."""
        return await asyncio.to_thread(self.read, max_records, max_bytes)

    def _reader_fd(self, seg_id: int, path: Path) -> int:
        if self._read_fd_seg != seg_id:
            if self._read_fd >= 0:
                os.close(self._read_fd)
                self._read_fd = -1
            self._read_fd = os.open(path, os.O_RDONLY)
            self._read_fd_seg = seg_id
        return self._read_fd

    @property
    def unacked(self) -> int:
        """Records handed out by read() and not acknowledged yet."""
        return len(self._unacked)

    def ack(self, n: int) -> None:
        """The first ``n`` records handed out and not yet acknowledged are done with (in Redis):
        move the cursor past them. The cursor file is written by the I/O thread. No I/O here."""
        if n <= 0:
            return
        with self._cond:
            if n > len(self._unacked):
                raise ValueError(f"ack({n}) but only {len(self._unacked)} records are unacknowledged")
            for _ in range(n - 1):
                self._unacked.popleft()
            seg_id, end, _idx = self._unacked.popleft()
            # all read records acked: the cursor may also jump over a skipped corrupt region
            self._cursor = (seg_id, end) if self._unacked else self._read_pos
            self._pending -= n
            self.acked += n
            self._cond.notify()

    def rewind(self) -> None:
        """Forget the records read but not acknowledged: the next read() yields them again."""
        with self._cond:
            if self._unacked:
                seg_id, _end, idx = self._unacked[0]
                self._read_pos = self._cursor
                # records before the cursor in its segment: the first unacked one's index - 1
                self._read_index = idx - 1 if self._cursor[0] == seg_id else 0
                self._unacked.clear()

    # ------------------------------------------------------------------ stats
    @property
    def dropped_events(self) -> int:
        return self.dropped_full + self.dropped_oversized + self.dropped_error + self.dropped_closed

    def pending(self) -> int:
        """Records accepted and not acknowledged (on disk or queued for writing)."""
        return self._pending

    def stats(self) -> dict[str, int | str | None]:
        with self._cond:
            return {
                "records": self._pending,
                "bytes": self._disk_bytes + self._queued_bytes,
                "segments": len(self._segments),
                "max_bytes": self.max_bytes,
                "queued_bytes": self._queued_bytes,
                "appended": self.appended,
                "replayed": self.replayed,
                "acked": self.acked,
                "dropped_events": self.dropped_events,
                "dropped_full": self.dropped_full,
                "dropped_oversized": self.dropped_oversized,
                "dropped_error": self.dropped_error,
                "write_errors": self.write_errors,
                "corrupt_records": self.corrupt_records,
                "corrupt_bytes": self.corrupt_bytes,
                "fsyncs": self.fsyncs,
                "last_seq": self._last_seq,
                "durable_seq": self._decided_seq,
                "last_error": self.last_error,
            }

    # ------------------------------------------------------------------ the I/O thread
    def _io_thread(self) -> None:
        try:
            self._io_loop()
        except BaseException:  # noqa: BLE001 - never die silently: count, refuse appends
            log.exception("spool I/O thread failed")
            with self._cond:
                self.last_error = "I/O thread failed"
                self._closing = True
                self._drop_queue_locked()
                if self._written_seq < self._last_seq:  # the batch being written when it failed
                    self._lost.append((self._written_seq + 1, self._last_seq))
                self._decided_seq = max(self._decided_seq, self._last_seq)
                self._notify_locked()  # settle wait_durable() callers (lost), or they wait forever
                self._cond.notify_all()

    def _io_loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while True:
                    now = time.monotonic()
                    fsync_due = (self._dirty and self.fsync == "interval"
                                 and now - self._last_fsync >= self.fsync_interval)
                    cursor_moved = self._cursor != self._cursor_written
                    cursor_due = cursor_moved and now - self._last_cursor_write >= self.cursor_interval
                    if self._queue or self._closing or self._force_sync or fsync_due or cursor_due:
                        break
                    timeout = None
                    if self._dirty and self.fsync == "interval":
                        timeout = max(self.fsync_interval - (now - self._last_fsync), 0.001)
                    if cursor_moved:
                        left = max(self.cursor_interval - (now - self._last_cursor_write), 0.001)
                        timeout = left if timeout is None else min(timeout, left)
                    cond.wait(timeout)
                batch = self._queue  # O(1) under the lock, whatever its length
                if batch:
                    self._queue = deque()
                closing = self._closing
                force = self._force_sync
                cursor = self._cursor
            if batch:
                self._write_batch(batch)
            if self._dirty and (self.fsync == "always" or force or (closing and self.fsync != "never")
                                or (self.fsync == "interval"
                                    and time.monotonic() - self._last_fsync >= self.fsync_interval)):
                self._fsync_active()
            if self.fsync == "never" or not self._dirty:
                with cond:
                    self._decided_seq = max(self._decided_seq, self._written_seq)
            if cursor != self._cursor_written and (
                    closing or force or time.monotonic() - self._last_cursor_write >= self.cursor_interval):
                self._persist_cursor(cursor)
            with cond:
                if force and not self._queue:
                    self._force_sync = False
                self._notify_locked()
                cond.notify_all()
                if closing and not self._queue:
                    break
        self._close_active()

    def _notify_locked(self) -> None:
        if self._waiters and self._loop is not None and not self._notify_pending:
            self._notify_pending = True
            try:
                self._loop.call_soon_threadsafe(self._resolve_waiters)
            except RuntimeError:  # the loop is closed
                self._notify_pending = False

    def _write_batch(self, batch: deque[tuple[int, int, bytes | None, bytes]]) -> None:
        bufs: list[bytes] = []
        first_seq = batch[0][0]
        part_size = 0
        try:
            for seq, n, head, payload in batch:
                full = self._active is None or self._active.size + part_size + n > self.segment_bytes
                if full or part_size >= WRITE_CHUNK:
                    if bufs:
                        self._write_parts(bufs, part_size, seq - 1)
                        bufs, part_size = [], 0
                        first_seq = seq
                    if full:
                        self._roll()
                if head is None:
                    size = n - REC_HDR.size
                    head = REC_HDR.pack(size, zlib.crc32(payload, zlib.crc32(_LEN.pack(size))))
                bufs.append(head)
                bufs.append(payload)
                part_size += n
            if bufs:
                self._write_parts(bufs, part_size, batch[-1][0])
        except OSError as exc:
            unwritten = sum(n for seq, n, _h, _p in batch if seq >= first_seq)
            self._on_write_error(exc, first_seq, batch[-1][0], unwritten)

    def _write_parts(self, bufs: list[bytes], part_size: int, last_seq: int) -> None:
        """Write whole records (header, payload, header, payload ...) to the active segment."""
        seg = self._active
        assert seg is not None
        try:
            _writev_all(self._active_fd, bufs)
        except OSError:
            # leave no torn record behind: cut back to the last complete one
            try:
                os.ftruncate(self._active_fd, seg.size)
            except OSError:
                # the reader stops at seg.size anyway; seal so nothing is appended after garbage
                self._seal_active()
            raise
        with self._cond:
            seg.size += part_size
            seg.records += len(bufs) // 2
            self._disk_bytes += part_size
            self._queued_bytes -= part_size
            self._written_seq = last_seq
            self._dirty = True

    def _roll(self) -> None:
        """Seal the active segment and start the next one."""
        if self._active is not None:
            if self._dirty and self.fsync != "never":
                self._fsync_active()
            self._seal_active()
        seg_id = self._next_seg_id
        path = self.directory / _seg_name(seg_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            os.write(fd, SEG_MAGIC)
            if self.fsync != "never":
                self._fsync_dir()
        except OSError:
            os.close(fd)
            try:
                path.unlink()
            except OSError:
                pass
            raise
        self._next_seg_id = seg_id + 1
        seg = _Segment(seg_id, path, SEG_HDR, 0, sealed=False)
        with self._cond:
            self._segments[seg_id] = seg
            self._disk_bytes += SEG_HDR
            self._active = seg
            self._active_fd = fd

    def _seal_active(self) -> None:
        seg = self._active
        if seg is None:
            return
        try:
            os.close(self._active_fd)
        except OSError:
            pass
        self._active_fd = -1
        try:
            self._write_count(seg.seg_id, seg.records, seg.size)
        except OSError:
            pass  # the next open scans it instead
        with self._cond:
            seg.sealed = True
            self._active = None

    def _close_active(self) -> None:
        if self._active is not None:
            if self._dirty and self.fsync != "never":
                try:
                    self._fsync_active()
                except OSError:
                    pass
            self._seal_active()

    def _fsync_active(self) -> None:
        if self._active_fd >= 0:
            try:
                os.fsync(self._active_fd)
            except OSError as exc:
                # the data reached the OS; a failed fsync is counted, not fatal
                with self._cond:
                    self.write_errors += 1
                    self.last_error = f"fsync: {exc.strerror or exc}"
        self.fsyncs += 1
        self._last_fsync = time.monotonic()
        with self._cond:
            self._dirty = False
            self._decided_seq = max(self._decided_seq, self._written_seq)

    def _fsync_dir(self) -> None:
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _on_write_error(self, exc: OSError, first_seq: int, last_seq: int, nbytes: int) -> None:
        """Records first_seq..last_seq were not written, nor is anything still queued: count them
        all as dropped, refuse appends for a while."""
        if self._dirty:
            self._fsync_active()  # settle what was written before the failure
        with self._cond:
            self.write_errors += 1
            self.last_error = f"write: {exc.strerror or exc}"
            lost = last_seq - first_seq + 1
            self._queued_bytes -= nbytes
            self._pending -= lost
            self.dropped_error += lost
            self._lost.append((first_seq, last_seq))
            self._drop_queue_locked()
            self._decided_seq = max(self._decided_seq, self._written_seq, last_seq)
            self._error_until = time.monotonic() + ERROR_BACKOFF
        log.error("spool %s: write failed (%s); %d records dropped, appends refused for %.0fs",
                  self.directory, exc.strerror or exc, lost, ERROR_BACKOFF)

    def _drop_queue_locked(self) -> None:
        if not self._queue:
            return
        first, last = self._queue[0][0], self._queue[-1][0]
        n = len(self._queue)
        self._queue.clear()
        self._pending -= n
        self.dropped_error += n
        self._queued_bytes = 0
        self._lost.append((first, last))
        self._decided_seq = max(self._decided_seq, last)

    def _persist_cursor(self, cursor: tuple[int, int]) -> None:
        """Write the cursor file (tmp + rename), then delete the segments wholly behind it."""
        head = struct.pack("<QQ", *cursor)
        tmp = self.directory / "cursor.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, head + struct.pack("<I", zlib.crc32(head)))
                if self.fsync != "never":
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.directory / "cursor")
        except OSError as exc:
            with self._cond:
                self.write_errors += 1
                self.last_error = f"cursor: {exc.strerror or exc}"
                self._cursor_written = cursor  # retried with the next ack, not in a busy loop
            self._last_cursor_write = time.monotonic()
            return
        self._cursor_written = cursor
        self._last_cursor_write = time.monotonic()
        seg_id, off = cursor
        for sid in list(self._segments):
            seg = self._segments[sid]
            if sid < seg_id or (sid == seg_id and off >= seg.size and seg is not self._active and seg.sealed):
                self._delete_segment(seg)
            else:
                break
        # everything replayed and nothing queued: drop the active segment too (space back at once)
        act = self._active
        if act is not None and act.seg_id == seg_id and off >= act.size:
            with self._cond:
                idle = not self._queue
            if idle:
                self._close_active()
                self._delete_segment(act)

    def _delete_segment(self, seg: _Segment) -> None:
        if seg is self._active:
            return
        self._remove_files(seg.seg_id)
        with self._cond:
            self._segments.pop(seg.seg_id, None)
            self._disk_bytes -= seg.size
        if self._read_fd_seg == seg.seg_id:
            pass  # the reader's fd stays valid after unlink; it moves on by itself


def _writev_all(fd: int, bufs: list[bytes]) -> None:
    """os.writev of every buffer, _IOV_MAX at a time, going on after a short write."""
    i = 0
    while i < len(bufs):
        chunk = bufs[i:i + _IOV_MAX]
        done = os.writev(fd, chunk)
        i += len(chunk)
        want = sum(map(len, chunk))
        if done < want:  # short write (rare on a regular file): the rest, buffer by buffer
            rest: list[bytes | memoryview] = []
            for b in chunk:
                if done >= len(b):
                    done -= len(b)
                    continue
                rest.append(memoryview(b)[done:])
                done = 0
            for b in rest:
                view = memoryview(b)
                while len(view):
                    view = view[os.write(fd, view):]


# ---------------------------------------------------------------------- publisher part payloads
_PART = struct.Struct("<BQIH")  # version, wall ms at ingest, events, distinct stats keys
PART_VERSION = 1


def pack_part(packed: bytes, stat_keys: list[str], wall_ms: int) -> bytes:
    """A spool payload for one publisher part: its pre-packed command(s) (e.g. the EVALSHA of
    APPLY_BATCH, which carries its producer watermark position, so replaying it is idempotent)
    and, per event, the ``exchange|class`` its counters belong to, plus the ingest wall time."""
    table: dict[str, int] = {}
    idx = array("H", [table.setdefault(k, len(table)) for k in stat_keys])
    if len(table) > 0xFFFF:
        raise ValueError("too many distinct stats keys in one part")
    names = b"".join(len(b := k.encode()[:255]).to_bytes(1, "little") + b for k in table)
    if sys.byteorder != "little":
        idx.byteswap()
    return _PART.pack(PART_VERSION, wall_ms, len(stat_keys), len(table)) + names + idx.tobytes() + packed


def unpack_part(payload: bytes) -> tuple[bytes, list[str], int]:
    """(packed, stats key per event, wall ms); ValueError if malformed."""
    if len(payload) < _PART.size:
        raise ValueError("spool part too short")
    ver, wall_ms, n_events, n_keys = _PART.unpack_from(payload)
    if ver != PART_VERSION:
        raise ValueError(f"spool part version {ver} unknown")
    p = _PART.size
    keys: list[str] = []
    for _ in range(n_keys):
        if p >= len(payload):
            raise ValueError("spool part truncated")
        n = payload[p]
        keys.append(payload[p + 1:p + 1 + n].decode())
        p += 1 + n
    end = p + 2 * n_events
    if end > len(payload):
        raise ValueError("spool part truncated")
    idx = array("H")
    idx.frombytes(payload[p:end])
    if sys.byteorder != "little":
        idx.byteswap()
    try:
        per_event = [keys[i] for i in idx]
    except IndexError:
        raise ValueError("spool part: bad stats key index") from None
    return payload[end:], per_event, wall_ms
