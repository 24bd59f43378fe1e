"""Per-process log files (one writer per file) and following them across rotation.

Each process's log file also receives its faulthandler stack dumps (fatal signals, and the
parent's dump request to a hung child; see :func:`shared.child.enable_stack_dumps`)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from shared.child import enable_stack_dumps
from shared.settings import Settings

FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"


class LogFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file whose stack dumps follow it: after a rollover, faulthandler is
    pointed at the new file (its descriptor would otherwise keep writing into ``.log.1``)."""

    def doRollover(self) -> None:
        super().doRollover()
        enable_stack_dumps(self.baseFilename)


def setup_logging(settings: Settings, name: str, *, to_stderr: bool = False) -> logging.Logger:
    """Log to ``<log_dir>/<name>.log`` (rotating), and to stderr when asked (the parent).

    Also sends this process's faulthandler stack dumps to the same file."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(settings.log_level)
    fmt = logging.Formatter(FORMAT)
    assert settings.log_dir is not None
    try:
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        fh = LogFileHandler(
            settings.log_file(name), maxBytes=settings.log_max_bytes,
            backupCount=settings.log_backups, encoding="utf-8",
        )
        fh.setFormatter(fmt)
        root.addHandler(fh)
        log_path: Path | None = settings.log_file(name)
    except OSError as exc:
        print(f"cannot open log file in {settings.log_dir}: {exc}", file=sys.stderr)
        to_stderr = True
        log_path = None
    # faulthandler: a stack dump on SIGSEGV/SIGABRT/... and on the parent's dump request
    if enable_stack_dumps(log_path) == "stderr" and log_path is not None:
        print(f"stack dumps go to stderr: cannot open {log_path}", file=sys.stderr)
    if to_stderr:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        root.addHandler(sh)
    import multiprocessing

    multiprocessing.current_process().name = name
    return logging.getLogger(name)


def tail_lines(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of a file (reads backwards in blocks; bounded memory)."""
    if n <= 0 or not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        block = 8192
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-n:]


def follow(path: Path, out: TextIO, *, poll: float = 0.2, stop_after: float | None = None) -> None:
    """``tail -f``: copy lines appended to ``path`` to ``out``, starting at its current end,
    reopening the file on rotation (inode change) and rewinding on truncation."""
    started = time.monotonic()
    f: TextIO | None = None
    ino: int | None = None
    first_open = True
    try:
        while stop_after is None or time.monotonic() - started < stop_after:
            if f is None:
                try:
                    f = open(path, "r", encoding="utf-8", errors="replace")
                    ino = os.fstat(f.fileno()).st_ino
                    if first_open:
                        f.seek(0, os.SEEK_END)
                except FileNotFoundError:
                    f = None
                first_open = False
            if f is not None:
                chunk = f.read()
                if chunk:
                    out.write(chunk)
                    out.flush()
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    st = None
                if st is not None and st.st_ino != ino:
                    rest = f.read()  # rotated: drain the old file, then switch to the new one
                    if rest:
                        out.write(rest)
                        out.flush()
                    f.close()
                    f = None
                    continue
                if st is not None and st.st_size < f.tell():
                    out.write("==> file truncated <==\n")
                    f.seek(0)
            time.sleep(poll)
    finally:
        if f is not None:
            f.close()
