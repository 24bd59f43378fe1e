"""Disk spool (collector/spool.py) on a real temp directory: order, bound, torn tails, restarts,
the ack cursor, write errors. No timed asserts: waits are ``sync()`` (write + fsync barrier)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import struct
import textwrap
import zlib
from pathlib import Path

import pytest

from collector.spool import REC_HDR, SEG_HDR, Spool, SpoolError, encode_record, pack_part, unpack_part
from shared.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]
SEG = 64 * 1024


def rec(i: int, size: int = 100) -> bytes:
    head = f"rec-{i:07d}|".encode()
    return head + bytes([i % 251]) * max(size - len(head), 0)


def open_spool(path: Path, **kw) -> Spool:
    kw.setdefault("segment_bytes", SEG)
    kw.setdefault("max_bytes", 4 * 1024 * 1024)
    kw.setdefault("fsync", "never")
    sp = Spool(path, **kw)
    sp.open()
    return sp


def drain(sp: Spool, chunk: int = 333) -> list[bytes]:
    out: list[bytes] = []
    while True:
        got = sp.read(chunk)
        if not got:
            return out
        out.extend(got)
        sp.ack(len(got))


def segment_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


# ---------------------------------------------------------------------- order and segments
def test_order_preserved_across_segments_and_segments_deleted(spool_dir: Path) -> None:
    sp = open_spool(spool_dir)
    sent = [rec(i, 50 + (i * 37) % 900) for i in range(3000)]
    seqs = [sp.append(p) for p in sent]
    assert seqs == list(range(1, 3001))
    assert sp.sync()
    st = sp.stats()
    assert st["segments"] > 5 and st["records"] == 3000 and st["queued_bytes"] == 0
    assert st["bytes"] == sum(f.stat().st_size for f in segment_files(spool_dir))
    assert all(f.stat().st_size <= SEG for f in segment_files(spool_dir))
    assert drain(sp) == sent
    assert sp.sync()  # persists the cursor, deletes consumed segments
    st = sp.stats()
    assert st["records"] == 0 and st["segments"] == 0 and st["bytes"] == 0
    assert segment_files(spool_dir) == []
    # it keeps working after being emptied
    assert sp.append(b"after") is not None
    assert sp.sync()
    assert drain(sp) == [b"after"]
    sp.close()


def test_read_interleaved_with_appends_stops_at_written_end(spool_dir: Path) -> None:
    sp = open_spool(spool_dir)
    out: list[bytes] = []
    sent: list[bytes] = []
    for i in range(2000):
        sent.append(rec(i, 300))
        sp.append(sent[-1])
        if i % 97 == 0:
            got = sp.read(50)
            out.extend(got)
            sp.ack(len(got))
    sp.sync()
    out.extend(drain(sp))
    assert out == sent
    assert sp.stats()["corrupt_records"] == 0
    sp.close()


def test_large_records_order_and_torn_tail(spool_dir: Path) -> None:
    # records >= 64 KiB get their CRC from the I/O thread (and go out by writev unjoined)
    sp = open_spool(spool_dir, segment_bytes=1 << 20, max_bytes=16 << 20)
    sent = [rec(i, 70_000 + i * 9_001) for i in range(30)]
    for p in sent:
        sp.append(p)
    sp.append(b"small")
    sp.close()
    last = segment_files(spool_dir)[-1]
    with open(last, "r+b") as f:  # tear the final (large) record
        f.truncate(last.stat().st_size - len(encode_record(b"small")) - 1000)
    sp = open_spool(spool_dir, segment_bytes=1 << 20, max_bytes=16 << 20)
    assert sp.stats()["corrupt_records"] == 1
    assert drain(sp, chunk=7) == sent[:-1]
    sp.close()


# ---------------------------------------------------------------------- the size bound
def test_bound_reached_refusal_counted_exactly(spool_dir: Path) -> None:
    max_bytes = 256 * 1024
    sp = open_spool(spool_dir, max_bytes=max_bytes, segment_bytes=SEG)
    accepted: list[bytes] = []
    refused = 0
    for i in range(5000):
        p = rec(i, 200)
        if sp.append(p) is None:
            refused += 1
        else:
            assert refused == 0, "a record accepted after a refusal would break the order"
            accepted.append(p)
        if i % 500 == 0:
            sp.sync()
    sp.sync()
    st = sp.stats()
    assert refused > 0 and len(accepted) + refused == 5000
    assert st["dropped_events"] == st["dropped_full"] == refused
    assert st["bytes"] <= max_bytes
    assert sum(f.stat().st_size for f in segment_files(spool_dir)) == st["bytes"]
    assert st["records"] == len(accepted)
    # append_many: a prefix is taken, the rest refused and counted
    ok, bad = sp.append_many([rec(i, 200) for i in range(10)])
    assert (ok, bad) == (0, 10)
    assert sp.stats()["dropped_events"] == refused + 10
    # replay gives back exactly what was accepted, and then there is room again
    assert drain(sp) == accepted
    sp.sync()
    assert sp.append(b"room again") is not None
    sp.close()


def test_oversized_record_refused_and_counted(spool_dir: Path) -> None:
    sp = open_spool(spool_dir)
    assert sp.append(b"x" * SEG) is None
    assert sp.append(b"y" * sp.max_record) == 1  # the largest record that fits a segment
    st = sp.stats()
    assert st["dropped_oversized"] == 1 and st["dropped_events"] == 1
    sp.sync()
    assert drain(sp) == [b"y" * sp.max_record]
    sp.close()


# ---------------------------------------------------------------------- torn / corrupt tails
def _write_and_close(path: Path, n: int, size: int = 100) -> list[bytes]:
    sp = open_spool(path)
    sent = [rec(i, size) for i in range(n)]
    for p in sent:
        sp.append(p)
    sp.close()
    return sent


def test_torn_tail_truncated_mid_record(spool_dir: Path) -> None:
    sent = _write_and_close(spool_dir, 1500)  # ~3 segments
    last = segment_files(spool_dir)[-1]
    full = last.stat().st_size
    with open(last, "r+b") as f:
        f.truncate(full - 7)  # a crash in the middle of writing the last record
    sp = open_spool(spool_dir)
    st = sp.stats()
    assert st["corrupt_records"] == 1 and st["corrupt_bytes"] == len(encode_record(sent[-1])) - 7
    assert last.stat().st_size == full - len(encode_record(sent[-1]))  # truncated to the good end
    assert st["records"] == 1499
    # new records go after the intact ones, order kept
    sp.append(b"new-1")
    sp.sync()
    assert drain(sp) == sent[:-1] + [b"new-1"]
    sp.close()
    # the truncation was for good: a second open finds nothing corrupt
    sp = open_spool(spool_dir)
    assert sp.stats()["corrupt_records"] == 0
    sp.close()


def test_corrupt_crc_in_tail_keeps_records_before(spool_dir: Path) -> None:
    sent = _write_and_close(spool_dir, 40)  # one segment
    seg = segment_files(spool_dir)[0]
    rec_len = len(encode_record(sent[0]))
    data = bytearray(seg.read_bytes())
    data[SEG_HDR + 30 * rec_len + REC_HDR.size + 5] ^= 0xFF  # a payload byte of record 30
    seg.write_bytes(bytes(data))
    sp = open_spool(spool_dir)
    st = sp.stats()
    assert st["corrupt_records"] == 1 and st["corrupt_bytes"] == 10 * rec_len
    assert st["records"] == 30
    assert drain(sp) == sent[:30]
    sp.close()


def test_garbage_length_and_short_header(spool_dir: Path) -> None:
    sent = _write_and_close(spool_dir, 10)
    seg = segment_files(spool_dir)[0]
    with open(seg, "ab") as f:
        f.write(b"\xff\xff\xff\x7f\x00")  # a huge length, torn
    sp = open_spool(spool_dir)
    assert sp.stats()["corrupt_records"] == 1
    assert drain(sp) == sent
    sp.close()
    # a segment with a bad magic is not ours: counted, removed, not replayed
    sp = open_spool(spool_dir)
    sp.append(b"keep")
    sp.close()
    (spool_dir / "0000000000000099.seg").write_bytes(b"NOTSPOOL" + encode_record(b"alien"))
    sp = open_spool(spool_dir)
    assert sp.stats()["corrupt_records"] == 1
    assert drain(sp) == [b"keep"]
    sp.close()


def test_corruption_in_sealed_segment_found_during_replay(spool_dir: Path) -> None:
    sent = _write_and_close(spool_dir, 1500)
    segs = segment_files(spool_dir)
    assert len(segs) >= 3 and (spool_dir / (segs[0].stem + ".count")).exists()
    rec_len = len(encode_record(sent[0]))
    per_seg = (SEG - SEG_HDR) // rec_len
    data = bytearray(segs[0].read_bytes())
    data[SEG_HDR + 100 * rec_len + REC_HDR.size + 1] ^= 0x01  # record 100 of the first segment
    segs[0].write_bytes(bytes(data))
    sp = open_spool(spool_dir)  # the sealed segment's sidecar is trusted at open
    assert sp.stats()["corrupt_records"] == 0 and sp.stats()["records"] == 1500
    out = drain(sp, chunk=64)
    st = sp.stats()
    assert out == sent[:100] + sent[per_seg:]
    assert st["corrupt_records"] == 1 and st["records"] == 0
    sp.close()


# ---------------------------------------------------------------------- restarts and the cursor
def test_restart_resumes_and_ack_cursor_persisted(spool_dir: Path) -> None:
    sent = _write_and_close(spool_dir, 1000)
    sp = open_spool(spool_dir)
    assert sp.stats()["records"] == 1000
    first = sp.read(400)
    assert first == sent[:400]
    sp.ack(250)  # 150 read but not acknowledged
    sp.close()
    assert (spool_dir / "cursor").exists()
    sp = open_spool(spool_dir)
    assert sp.stats()["records"] == 750
    assert drain(sp) == sent[250:]  # the unacknowledged 150 come again (at-least-once)
    sp.close()
    sp = open_spool(spool_dir)
    assert sp.stats()["records"] == 0 and drain(sp) == []
    sp.close()
    assert segment_files(spool_dir) == []


def test_damaged_cursor_replays_from_the_start(spool_dir: Path) -> None:
    sent = _write_and_close(spool_dir, 100)
    sp = open_spool(spool_dir)
    sp.ack(len(sp.read(40)))
    sp.close()
    cursor = spool_dir / "cursor"
    raw = bytearray(cursor.read_bytes())
    # an offset that is not a record boundary (CRC made valid): not trusted, replay from the start
    seg_id, off, _crc = struct.unpack("<QQI", raw)
    head = struct.pack("<QQ", seg_id, off - 3)
    cursor.write_bytes(head + struct.pack("<I", zlib.crc32(head)))
    sp = open_spool(spool_dir)
    assert sp.stats()["records"] == 100 and drain(sp) == sent
    sp.close()
    # a cursor file with a bad CRC: the same
    sent = _write_and_close(spool_dir, 50)
    sp = open_spool(spool_dir)
    sp.ack(len(sp.read(20)))
    sp.close()
    raw = bytearray(cursor.read_bytes())
    raw[3] ^= 0xFF
    cursor.write_bytes(bytes(raw))
    sp = open_spool(spool_dir)
    assert drain(sp) == sent
    sp.close()


def _run_py(code: str, *args: str) -> dict:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_crash_without_close_loses_nothing_durable(spool_dir: Path) -> None:
    # a real process that appends, acks, syncs, then dies without closing (os._exit)
    out = _run_py("""
        import json, os, sys
        from collector.spool import Spool
        sp = Spool(sys.argv[1], segment_bytes=64 * 1024, max_bytes=4 << 20, fsync="always")
        sp.open()
        for i in range(1000):
            sp.append(b"r%06d" % i * 10)
        sp.sync()            # read() sees only what the I/O thread has written
        got = sp.read(300)
        sp.ack(200)
        sp.sync()            # every record durable, cursor written
        for i in range(1000, 1010):
            sp.append(b"r%06d" % i * 10)   # maybe written, maybe not: never torn on reopen
        print(json.dumps({"read": len(got), "durable": sp.durable_seq}), flush=True)
        os._exit(0)
    """, str(spool_dir))
    assert out == {"read": 300, "durable": 1000}
    sp = open_spool(spool_dir)
    replay = drain(sp)
    expected = [b"r%06d" % i * 10 for i in range(200, 1010)]
    assert replay[:800] == expected[:800]
    assert replay == expected[:len(replay)]  # the unsynced tail: a prefix of it, nothing torn
    assert sp.stats()["corrupt_records"] == 0
    sp.close()


def test_rewind_yields_unacked_again(spool_dir: Path) -> None:
    sent = _write_and_close(spool_dir, 1200)
    sp = open_spool(spool_dir)
    a = sp.read(700)  # crosses a segment boundary
    sp.ack(300)
    sp.rewind()
    assert sp.unacked == 0
    b = drain(sp)
    assert a[:300] + b == sent
    assert sp.stats()["records"] == 0
    with pytest.raises(ValueError):
        sp.ack(1)
    sp.close()


def test_second_open_of_same_dir_refused(spool_dir: Path) -> None:
    sp = open_spool(spool_dir)
    with pytest.raises(SpoolError, match="in use by another process"):
        open_spool(spool_dir)
    sp.close()
    open_spool(spool_dir).close()  # the lock goes with close
    with pytest.raises(SpoolError, match="cannot be opened again"):
        sp.open()


# ---------------------------------------------------------------------- error paths
def test_unwritable_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SpoolError) as ei:
        Spool(blocker / "spool").open()
    msg = str(ei.value)
    assert "cannot create or write" in msg and "\n" not in msg
    # appends to a spool that is not open are refused and counted, never raise
    sp = Spool(blocker / "spool")
    assert sp.append(b"x") is None and sp.stats()["dropped_events"] == 1


def test_dir_removed_while_running_counts_drops(spool_dir: Path) -> None:
    sp = open_spool(spool_dir)
    sp.append(b"first")
    sp.sync()
    got = sp.read(10)
    sp.ack(len(got))
    sp.sync()  # the emptied active segment is deleted; the next append needs a new file
    shutil.rmtree(spool_dir)
    seqs = [sp.append(rec(i)) for i in range(5)]
    assert sp.sync()
    st = sp.stats()
    assert st["write_errors"] >= 1 and st["last_error"]
    # all 5 were accepted (the error comes later, in the I/O thread), then lost and counted
    assert all(s is not None for s in seqs)
    assert st["dropped_error"] == 5 and st["records"] == 0 and st["bytes"] == 0
    # during the backoff further appends are refused (counted), not raised
    assert sp.append(b"during backoff") is None
    assert sp.stats()["dropped_events"] == 6
    sp.close()


def test_disk_full_write_error_counted_records_before_intact(spool_dir: Path) -> None:
    # RLIMIT_FSIZE makes the kernel refuse writes past 100 kB in a file (EFBIG), a real write
    # error like ENOSPC, in a child process so the test runner is not limited
    out = _run_py("""
        import asyncio, json, resource, signal, sys
        from collector.spool import Spool
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
        sp = Spool(sys.argv[1], segment_bytes=1 << 20, max_bytes=8 << 20, fsync="always")
        sp.open()

        async def main():
            ok = []
            for i in range(600):  # 600 x 300 B: past the 100 kB file limit
                seq = sp.append(b"%06d" % i + b"." * 294)
                if seq is not None:
                    ok.append((i, await sp.wait_durable(seq)))
            return ok

        res = asyncio.run(main())
        durable = [i for i, good in res if good]
        lost = [i for i, good in res if not good]
        st = sp.stats()
        sp.close()
        print(json.dumps({"durable": durable, "lost": lost, "stats": st}))
    """, str(spool_dir))
    st, durable, lost = out["stats"], out["durable"], out["lost"]
    assert st["write_errors"] >= 1 and "too large" in (st["last_error"] or "").lower()
    assert durable == list(range(len(durable))) and 0 < len(durable) < 600
    # every record not durable was counted as dropped: nothing vanishes silently
    assert len(durable) + st["dropped_events"] == 600
    assert len(lost) <= st["dropped_error"]
    sp = open_spool(spool_dir, segment_bytes=1 << 20, max_bytes=8 << 20)
    replay = drain(sp)
    assert replay == [b"%06d" % i + b"." * 294 for i in durable]
    assert sp.stats()["corrupt_records"] == 0
    sp.close()


# ---------------------------------------------------------------------- durability on the loop
@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_wait_durable_each_policy(spool_dir: Path, policy: str) -> None:
    sp = open_spool(spool_dir, fsync=policy, fsync_interval_ms=20)

    async def main() -> list[bool]:
        seqs = [sp.append(rec(i)) for i in range(100)]
        return [await sp.wait_durable(s) for s in seqs if s is not None]

    assert asyncio.run(main()) == [True] * 100
    assert sp.durable_seq == 100
    if policy != "never":
        assert sp.stats()["fsyncs"] >= 1
    sp.close()
    sp = open_spool(spool_dir)
    assert len(drain(sp)) == 100
    sp.close()


# ---------------------------------------------------------------------- item payloads, settings
def test_part_codec_roundtrip() -> None:
    packed = b"*3\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n0\r\n"
    keys = ["binance|trade", "binance|trade", "binance|book", "okx|trade", "binance|trade"]
    p = pack_part(packed, keys, 1_700_000_000_123)
    assert unpack_part(p) == (packed, keys, 1_700_000_000_123)
    assert unpack_part(pack_part(packed, [], 5)) == (packed, [], 5)
    for bad in (p[:5], b"\x09" + p[1:], p[:20]):
        with pytest.raises(ValueError):
            unpack_part(bad)


def test_spool_settings_defaults_and_errors(tmp_path: Path) -> None:
    s = load_settings(run_dir=str(tmp_path))
    assert s.publisher.spool_enabled is True and s.publisher.spool_fsync == "interval"
    assert s.publisher.spool_max_bytes == 1024 ** 3 and s.publisher.spool_fsync_interval_ms == 200
    assert s.spool_directory == tmp_path / "NODE_A.spool"
    s = load_settings(publisher={"spool_dir": str(tmp_path / "x")})
    assert s.spool_directory == tmp_path / "x"
    for bad, field in [({"spool_fsync": "sometimes"}, "publisher.spool_fsync"),
                       ({"spool_max_bytes": 10}, "publisher.spool_max_bytes"),
                       ({"spool_max_bytes": 2 << 20, "spool_segment_bytes": 4 << 20},
                        "publisher.spool_segment_bytes"),
                       ({"spool_fsync_interval_ms": 0}, "publisher.spool_fsync_interval_ms")]:
        with pytest.raises(ConfigError) as ei:
            load_settings(publisher=bad)
        assert str(ei.value).startswith(f"config error: {field}:") and "\n" not in str(ei.value)


def test_env_override_spool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COLLECTOR_PUBLISHER__SPOOL_FSYNC", "always")
    monkeypatch.setenv("COLLECTOR_PUBLISHER__SPOOL_DIR", str(tmp_path / "sp"))
    s = load_settings()
    assert s.publisher.spool_fsync == "always" and s.spool_directory == tmp_path / "sp"
    assert os.fspath(s.spool_directory).endswith("sp")
