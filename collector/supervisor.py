"""The parent process: spawns and supervises the publisher and one worker per exchange.

Read it like gunicorn's ``Arbiter.run``: :meth:`Supervisor.run` starts the servers, spawns the
children and loops ``tick()`` — reap, enforce deadlines, transition, sample resources, tell the
publisher — until a signal asks for a graceful :meth:`Supervisor._shutdown`. Read the states like
supervisor's ``process.py``: every state change goes through :meth:`Supervisor.change_state`,
checked against :data:`ALLOWED`, whose comments name each edge.

Policies (numbers in ``settings.supervisor``):
- a crash (any exit nobody asked for) -> BACKOFF, restarted after an exponential delay with
  jitter (1 s doubling to 60 s), reset after ``stable_after`` s RUNNING;
- more than ``max_restarts`` crashes within ``restart_window`` s -> FATAL for that child only
  (OTP's restart intensity, one_for_one); exit code EXIT_CONFIG -> FATAL at once;
  only ``collectorctl restart``/``start`` revives a FATAL child;
- a publisher in FATAL stops the collector with exit code 1 (the outer supervisor restarts us);
- ``over_limit_samples`` consecutive RSS/FD samples over a limit -> RECYCLING: graceful stop,
  SIGKILL after ``stop_timeout``, replaced at once; counted as a recycle, not a crash;
- readiness (STARTING -> RUNNING) needs the child's ``ready`` message; no beat for
  ``beat_timeout`` s while RUNNING means a blocked event loop (the beat is sent from the child's
  loop, judged here with monotonic time): the child is asked for a faulthandler stack dump into
  its log (the signal its ``ready`` named), SIGKILLed ``hung_dump_grace`` s later, and counted as
  a crash and in ``hung_kills``; ``last_dump`` in its status says where the dump is.

Signal handlers only set flags; all work happens in the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from shared import __version__, ipc
from shared.backoff import Backoff
from shared.settings import Settings
from shared.states import EXIT_CONFIG, ProcessState

log = logging.getLogger("collector.supervisor")

S = ProcessState

#: The allowed state changes; anything else is a bug and raises. Every edge is named.
ALLOWED: dict[ProcessState, frozenset[ProcessState]] = {
    S.STOPPED: frozenset({
        S.STARTING,   # STOPPED -> STARTING: initial start, `start`, `restart`
    }),
    S.STARTING: frozenset({
        S.RUNNING,    # STARTING -> RUNNING: the child sent its `ready` message
        S.BACKOFF,    # STARTING -> BACKOFF: died, or killed for not being ready in time (a crash)
        S.FATAL,      # STARTING -> FATAL: exit EXIT_CONFIG, or too many crashes in the window
        S.STOPPING,   # STARTING -> STOPPING: `stop`/`restart`, or shutdown
    }),
    S.RUNNING: frozenset({
        S.BACKOFF,    # RUNNING -> BACKOFF: exited unexpectedly, or killed as hung (a crash)
        S.FATAL,      # RUNNING -> FATAL: exit EXIT_CONFIG, or too many crashes in the window
        S.STOPPING,   # RUNNING -> STOPPING: `stop`/`restart`, or shutdown
        S.RECYCLING,  # RUNNING -> RECYCLING: over an RSS/FD limit for K samples
    }),
    S.BACKOFF: frozenset({
        S.STARTING,   # BACKOFF -> STARTING: delay elapsed, or `start`/`restart`
        S.STOPPED,    # BACKOFF -> STOPPED: `stop`, or shutdown (nothing is running)
    }),
    S.STOPPING: frozenset({
        S.STOPPED,    # STOPPING -> STOPPED: exited after being asked to
        S.STARTING,   # STOPPING -> STARTING: exited, and a `restart` asked for a fresh one
    }),
    S.RECYCLING: frozenset({
        S.STARTING,   # RECYCLING -> STARTING: the old process exited; replace it at once
        S.STOPPING,   # RECYCLING -> STOPPING: `stop`, or shutdown, while recycling
    }),
    S.FATAL: frozenset({
        S.STARTING,   # FATAL -> STARTING: `restart`/`start` (the only way out)
        S.STOPPED,    # FATAL -> STOPPED: `stop`
    }),
}

ALIVE_STATES = frozenset({S.STARTING, S.RUNNING, S.STOPPING, S.RECYCLING})

TICK_S = 0.25
CHILDREN_MSG_INTERVAL_S = 1.0
#: beats kept per child for rates (events/s over ~5 s) and recent drops (60 s)
SAMPLES_KEPT = 128
RATE_WINDOW_S = 5.0
DROPS_WINDOW_S = 60.0
#: don't queue more than this for a publisher that stopped reading its status link
MAX_LINK_BUFFER = 1 << 20
#: how long to wait for the publisher's readiness before spawning workers
PUBLISHER_HEAD_START_S = 5.0

#: counters in beats that are cumulative over a process's life (carried across restarts)
WORKER_COUNTERS = ("events_out", "drops", "parse_errors", "rejected", "ws_reconnects", "ws_stale",
                   "rest_calls", "rest_errors", "push_updates")
PUBLISHER_COUNTERS = ("redis_errors", "frame_errors", "listings_emitted", "listing_snapshots_truncated",
                      "listing_snapshots_empty", "spool_dropped_events", "spool_corrupt_records",
                      "spool_write_errors")
STREAM_COUNTERS = ("in", "pushed", "deduped", "dropped", "rate_limited")


class InvalidTransition(RuntimeError):
    """A state change not in :data:`ALLOWED` (a bug in the supervisor)."""


class ProcessLike(Protocol):
    """The part of ``multiprocessing.Process`` the supervisor uses (fakes implement it in tests)."""

    pid: int | None

    @property
    def exitcode(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def send_signal(self, sig: int) -> None: ...

    def close(self) -> None: ...


@dataclass
class ChildSpec:
    """What to run: ``target(*args, status_sock)`` in a spawned process."""

    name: str
    kind: str  # "publisher" | "worker"
    target: Callable[..., Any]
    args: tuple = ()


@dataclass
class Child:
    """One supervised child and everything the parent knows about it."""

    name: str                              # "publisher" or the exchange name
    kind: str                              # "publisher" | "worker"
    target: Callable[..., Any]             # spawned as target(*args, status_sock)
    args: tuple
    backoff: Backoff                       # restart delay (reset after a stable run)
    state: ProcessState = S.STOPPED
    state_since: float = 0.0               # monotonic time of the last change_state
    process: ProcessLike | None = None     # the current incarnation (None when not alive)
    pid: int | None = None
    incarnation: int = 0                   # bumped at each spawn; stale link messages are ignored
    started_at: float | None = None        # monotonic, current incarnation
    ready_at: float | None = None          # monotonic, when it sent `ready`
    restarts: deque = field(default_factory=deque)  # monotonic times of crashes (OTP window)
    total_restarts: int = 0                # crashes over the collector's life
    recycles: int = 0                      # planned replacements (not crashes)
    next_start_at: float | None = None     # monotonic, while in BACKOFF
    last_exit: str | None = None           # "exit 1", "killed by SIGKILL (out of memory?)"
    last_error: str | None = None          # why it last failed, in words
    stats: dict = field(default_factory=dict)  # latest beat of the current incarnation
    last_beat: float | None = None         # monotonic
    over_limit: int = 0                    # consecutive resource samples over a limit
    rss: int | None = None                 # bytes, latest sample
    fds: int | None = None                 # latest sample
    stop_deadline: float | None = None     # monotonic; SIGKILL after it while STOPPING/RECYCLING
    kill_at: float | None = None           # monotonic; SIGKILL then (a hung child, after its dump)
    dump_signal: int | None = None         # the child's stack-dump signal, from its `ready`
    dump_file: str | None = None           # where that dump is written (its log, or "stderr")
    hung_kills: int = 0                    # killed as hung over the collector's life
    last_dump: dict | None = None          # the last dump requested: file, pid, signal, wall time
    restart_after_stop: bool = False       # a `restart`/`start` waits for the stop to finish
    kill_reason: str | None = None         # set when we SIGKILLed it (so the exit is explained)
    carried: dict = field(default_factory=dict)  # counters of earlier incarnations (metrics)
    samples: deque = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))  # (t, events, drops)
    writer: asyncio.StreamWriter | None = None   # parent's end of the status link
    ps: Any = None                         # cached psutil.Process of the current incarnation

    def alive(self) -> bool:
        return self.process is not None

    def totals(self) -> dict[str, Any]:
        """Cumulative counters: earlier incarnations plus the current one."""
        return merge_counters(self.carried, self.stats)


# ---------------------------------------------------------------- counters

def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def merge_counters(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Sum the cumulative counters of two stats dicts (non-counter keys are not kept)."""
    out: dict[str, Any] = {}
    for key in WORKER_COUNTERS + PUBLISHER_COUNTERS:
        va, vb = a.get(key), b.get(key)
        if _is_num(va) or _is_num(vb):
            out[key] = (va if _is_num(va) else 0) + (vb if _is_num(vb) else 0)
    streams: dict[str, dict[str, float]] = {}
    for src in (a.get("streams"), b.get("streams")):
        if not isinstance(src, dict):
            continue
        for sid, counts in src.items():
            if not isinstance(counts, dict):
                continue
            dst = streams.setdefault(str(sid), {})
            for key in STREAM_COUNTERS:
                if _is_num(counts.get(key)):
                    dst[key] = dst.get(key, 0) + counts[key]
    if streams:
        out["streams"] = streams
    by_event: dict[str, float] = {}
    for src in (a.get("listings_by_event"), b.get("listings_by_event")):
        if isinstance(src, dict):
            for event, n in src.items():
                if _is_num(n):
                    by_event[str(event)[:32]] = by_event.get(str(event)[:32], 0) + n
    if by_event:
        out["listings_by_event"] = by_event
    latency = _merge_latency(a.get("latency"), b.get("latency"))
    if latency is not None:
        out["latency"] = latency
    return out


def _merge_latency(a: Any, b: Any) -> dict[str, Any] | None:
    parts = [x for x in (a, b) if isinstance(x, dict)]
    if not parts:
        return None
    buckets: dict[float, float] = {}
    total, count = 0.0, 0
    for part in parts:
        for pair in part.get("buckets") or []:
            try:
                le, cum = float(pair[0]), pair[1]
            except (TypeError, ValueError, IndexError):
                continue
            if _is_num(cum):
                buckets[le] = buckets.get(le, 0) + cum
        total += part.get("sum") if _is_num(part.get("sum")) else 0.0
        count += part.get("count") if _is_num(part.get("count")) else 0
    return {"buckets": [[le, buckets[le]] for le in sorted(buckets)], "sum": total, "count": count}


def events_and_drops(kind: str, totals: dict[str, Any]) -> tuple[float, float]:
    """(events out, events dropped) of a child: a worker's channel, or the publisher's pushes."""
    if kind == "publisher":
        streams = totals.get("streams") or {}
        return (sum(s.get("pushed", 0) for s in streams.values()),
                sum(s.get("dropped", 0) for s in streams.values()))
    return totals.get("events_out", 0), totals.get("drops", 0)


def describe_exit(code: int, kill_reason: str | None = None) -> str:
    """``exit 1``; ``killed by SIGTERM``; ``killed by SIGKILL (out of memory?)``."""
    if code >= 0:
        return f"exit {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if kill_reason:
        return f"killed by {name} ({kill_reason})"
    if -code == signal.SIGKILL:
        return f"killed by {name} (out of memory?)"
    return f"killed by {name}"


# ---------------------------------------------------------------- spawning

_SPAWN = multiprocessing.get_context("spawn")

#: signals a child may name for its stack dump (anything else in a `ready` is ignored)
DUMP_SIGNALS = frozenset({int(signal.SIGUSR1), int(signal.SIGUSR2)})


class ChildProcess(_SPAWN.Process):  # type: ignore[name-defined,misc]
    """A spawned child that can also be sent an arbitrary signal (the stack-dump request)."""

    def send_signal(self, sig: int) -> None:
        # exitcode polls waitpid: a reaped pid may already belong to someone else
        if self.pid is not None and self.exitcode is None:
            os.kill(self.pid, sig)


def _child_entry(kind: str, name: str, settings: Settings, status_sock: socket.socket) -> None:
    """Top-level target of every real child (spawn pickles it by reference)."""
    try:
        if kind == "publisher":
            from collector.publisher import publisher_main

            code = publisher_main(settings, status_sock)
        else:
            from workers.runtime import worker_main

            code = worker_main(name, settings, status_sock)
    except ImportError as exc:
        # a broken install will not fix itself by restarting: FATAL at once
        print(f"{name}: cannot import its entry point: {exc}", file=sys.stderr)
        code = EXIT_CONFIG
    sys.exit(code)


def spawn_process(child: Child) -> tuple[ProcessLike, socket.socket]:
    """Start ``child.target(*child.args, status_sock)`` with the spawn method.

    Returns the process and the parent's end of the status socketpair. The child end is closed
    here once the child has its copy, so EOF on the link means the child is gone.
    """
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        proc = ChildProcess(target=child.target, args=(*child.args, child_end),
                            name=child.name, daemon=True)
        proc.start()
    except BaseException:
        parent_end.close()
        raise
    finally:
        child_end.close()
    return proc, parent_end


def default_specs(settings: Settings) -> list[ChildSpec]:
    """The publisher first, then one worker per enabled exchange."""
    specs = [ChildSpec("publisher", "publisher", _child_entry, ("publisher", "publisher", settings))]
    for exchange in settings.exchanges.enabled():
        specs.append(ChildSpec(exchange, "worker", _child_entry, ("worker", exchange, settings)))
    return specs


Launcher = Callable[[Child], "tuple[ProcessLike, socket.socket | None]"]
Sampler = Callable[[Child], "tuple[int, int] | None"]


def psutil_sampler(child: Child) -> tuple[int, int] | None:
    """(rss bytes, open fds) of the child's current process, or None if it cannot be read."""
    import psutil

    if child.pid is None:
        return None
    try:
        if child.ps is None or child.ps.pid != child.pid:
            child.ps = psutil.Process(child.pid)
        with child.ps.oneshot():
            return child.ps.memory_info().rss, child.ps.num_fds()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


# ---------------------------------------------------------------- the supervisor

class Supervisor:
    """Owns the children, the lock, the control socket and the HTTP server."""

    def __init__(self, settings: Settings, *, specs: list[ChildSpec] | None = None,
                 launcher: Launcher = spawn_process, sampler: Sampler = psutil_sampler,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.cfg = settings.supervisor
        self._launcher = launcher
        self._sampler = sampler
        self._clock = clock
        self.children: dict[str, Child] = {}
        for spec in specs if specs is not None else default_specs(settings):
            self.children[spec.name] = Child(
                name=spec.name, kind=spec.kind, target=spec.target, args=tuple(spec.args),
                backoff=Backoff(self.cfg.backoff_initial, self.cfg.backoff_max),
                state_since=clock(),
            )
        self.started_at_wall: float = time.time()
        self.started_at: float = clock()
        self.shutting_down = False
        self._workers_draining = False  # shutdown phase 1: the publisher may still restart
        self._signals: list[int] = []
        self._hurry = False
        self._wakeup = asyncio.Event()
        self._lock_fd: int | None = None
        self._link_tasks: set[asyncio.Task] = set()
        self._next_sample_at = 0.0
        self._next_children_msg_at = 0.0
        self._control: Any = None
        self._http: Any = None
        self.http_port: int | None = None

    # ------------------------------------------------------------ state machine

    def change_state(self, child: Child, new: ProcessState, reason: str) -> None:
        """The single place a child's state changes: validated, logged, timestamped."""
        old = child.state
        if new not in ALLOWED[old]:
            raise InvalidTransition(f"{child.name}: {old} -> {new} is not allowed ({reason})")
        child.state = new
        child.state_since = self._clock()
        level = logging.INFO
        if new in (S.BACKOFF, S.RECYCLING):
            level = logging.WARNING
        elif new is S.FATAL:
            level = logging.ERROR
        log.log(level, "%s: %s -> %s (%s)", child.name, old, new, reason)

    def spawn(self, child: Child, now: float, reason: str) -> None:
        """Start a fresh incarnation (-> STARTING); a spawn failure counts as a crash."""
        if S.STARTING not in ALLOWED[child.state]:
            raise InvalidTransition(f"{child.name}: cannot spawn from {child.state}")
        child.incarnation += 1
        child.started_at = now
        child.ready_at = None
        child.last_beat = now
        child.stats = {}
        child.over_limit = 0
        child.rss = child.fds = None
        child.stop_deadline = None
        child.restart_after_stop = False
        child.kill_reason = None
        child.kill_at = None
        child.dump_signal = child.dump_file = None
        child.next_start_at = None
        child.ps = None
        try:
            proc, sock = self._launcher(child)
        except Exception as exc:  # noqa: BLE001 - EMFILE, EAGAIN, pickling errors...
            self.change_state(child, S.STARTING, reason)
            child.last_error = f"spawn failed: {exc.__class__.__name__}: {exc}"
            child.last_exit = "not started"
            self._on_crash(child, now, config_error=False)
            return
        child.process = proc
        child.pid = proc.pid
        self.change_state(child, S.STARTING, f"{reason}; pid {proc.pid}")
        if sock is not None:
            self._attach_link(child, sock)

    def tick(self, now: float | None = None) -> None:
        """One pass of the main loop: reap, enforce deadlines, transition, sample, inform."""
        now = self._clock() if now is None else now
        for child in self.children.values():
            self._reap(child, now)
            self._enforce_deadlines(child, now)
            self._transition(child, now)
        if now >= self._next_sample_at:
            self._next_sample_at = now + self.cfg.sample_interval
            self.sample_resources(now)
        if now >= self._next_children_msg_at:
            self._next_children_msg_at = now + CHILDREN_MSG_INTERVAL_S
            self._send_children_message()

    def _reap(self, child: Child, now: float) -> None:
        proc = child.process
        if proc is None:
            return
        code = proc.exitcode  # polls waitpid(WNOHANG)
        if code is None:
            return
        child.last_exit = describe_exit(code, child.kill_reason)
        self._retire_incarnation(child)
        if child.state is S.STOPPING:
            if child.restart_after_stop and not self.shutting_down:
                self.spawn(child, now, f"restart requested; old process {child.last_exit}")
            else:
                self.change_state(child, S.STOPPED, child.last_exit)
        elif child.state is S.RECYCLING:
            # RECYCLING -> STARTING: planned replacement, no backoff, not a crash
            self.spawn(child, now, f"replacing recycled process ({child.last_exit})")
        elif child.state in (S.STARTING, S.RUNNING):
            if child.kill_reason:
                child.last_error = child.kill_reason
            elif child.state is S.STARTING:
                child.last_error = f"exited before ready: {child.last_exit}"
            else:
                child.last_error = f"exited unexpectedly: {child.last_exit}"
            self._on_crash(child, now, config_error=(code == EXIT_CONFIG))
        else:  # no process should exist in other states
            log.error("%s: reaped a process in state %s (%s)", child.name, child.state, child.last_exit)

    def _retire_incarnation(self, child: Child) -> None:
        """The process is gone: keep its counters, drop its handles."""
        child.carried = merge_counters(child.carried, child.stats)
        child.stats = {}
        proc = child.process
        child.process = None
        child.pid = None
        child.ps = None
        child.rss = child.fds = None
        child.over_limit = 0
        if child.writer is not None:
            child.writer.close()
            child.writer = None
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.close()  # releases the sentinel fd; without it every restart leaks one

    def _on_crash(self, child: Child, now: float, *, config_error: bool) -> None:
        """STARTING/RUNNING -> BACKOFF, or FATAL (config error, or restart intensity exceeded)."""
        window = self.cfg.restart_window
        child.restarts.append(now)
        while child.restarts and child.restarts[0] < now - window:
            child.restarts.popleft()
        child.total_restarts += 1
        if config_error:
            child.last_error = f"configuration error ({child.last_exit}); see its log"
            self.change_state(child, S.FATAL, f"{child.last_error}; fix it, then "
                                              f"`collectorctl restart {child.name}`")
        elif len(child.restarts) > self.cfg.max_restarts:
            child.last_error = (f"{len(child.restarts)} crashes within {window:g}s; "
                                f"last: {child.last_error or child.last_exit}")
            self.change_state(child, S.FATAL, child.last_error)
        else:
            delay = child.backoff.next_delay()
            child.next_start_at = now + delay
            self.change_state(child, S.BACKOFF, f"{child.last_error}; restart in {delay:.1f}s")

    def _enforce_deadlines(self, child: Child, now: float) -> None:
        if child.process is None:
            return
        if child.kill_at is not None:  # a hung child had its dump grace; whatever its state now
            if now >= child.kill_at:
                child.kill_at = None
                self._kill(child, child.kill_reason or "hung")
            return
        if child.kill_reason is not None:
            return
        if child.state is S.STARTING and child.started_at is not None \
                and now - child.started_at > self.cfg.ready_timeout:
            self._kill(child, f"not ready within {self.cfg.ready_timeout:g}s")
        elif child.state is S.RUNNING and child.last_beat is not None \
                and now - child.last_beat > self.cfg.beat_timeout:
            self._hung(child, now, f"hung: no heartbeat for {now - child.last_beat:.0f}s")
        elif child.state in (S.STOPPING, S.RECYCLING) and child.stop_deadline is not None \
                and now >= child.stop_deadline:
            self._kill(child, "did not stop in time")

    def _hung(self, child: Child, now: float, reason: str) -> None:
        """A blocked event loop: ask for a stack dump, SIGKILL after the grace (at once without
        a dump signal or with a zero grace). The kill counts as a crash (-> BACKOFF on exit)."""
        child.hung_kills += 1
        grace = self.cfg.hung_dump_grace
        sig = child.dump_signal
        if sig is None or grace <= 0 or child.process is None:
            self._kill(child, reason)
            return
        try:
            child.process.send_signal(sig)
        except (ProcessLookupError, OSError, AttributeError) as exc:
            log.warning("%s: stack dump request failed: %s", child.name, exc)
            self._kill(child, reason)
            return
        where = child.dump_file or "stderr"
        child.last_dump = {"file": where, "pid": child.pid, "signal": signal.Signals(sig).name,
                           "at": round(time.time(), 3), "reason": reason}
        child.kill_reason = f"{reason}; stacks dumped to {os.path.basename(where)}"
        child.kill_at = now + grace
        log.error("%s: %s; stack dump requested (%s) into %s; SIGKILL to pid %s in %gs",
                  child.name, reason, signal.Signals(sig).name, where, child.pid, grace)

    def _kill(self, child: Child, reason: str) -> None:
        log.error("%s: %s; sending SIGKILL to pid %s", child.name, reason, child.pid)
        child.kill_reason = reason
        if child.process is not None:
            with contextlib.suppress(ProcessLookupError, OSError, ValueError):
                child.process.kill()

    def _transition(self, child: Child, now: float) -> None:
        if child.state is S.BACKOFF and child.next_start_at is not None and now >= child.next_start_at:
            if self._may_start(child):
                self.spawn(child, now, "backoff elapsed")  # BACKOFF -> STARTING
        elif child.state is S.RUNNING and child.backoff.attempts and child.ready_at is not None \
                and now - child.ready_at >= self.cfg.stable_after:
            log.info("%s: stable for %.0fs; backoff reset", child.name, now - child.ready_at)
            child.backoff.reset()

    def _may_start(self, child: Child) -> bool:
        if not self.shutting_down:
            return True
        # while workers drain, a crashed publisher may come back to receive their last batches
        return child.kind == "publisher" and self._workers_draining

    def _begin_stop(self, child: Child, now: float, new_state: ProcessState, reason: str,
                    timeout: float | None = None, restart_after: bool = False) -> None:
        """Ask a live child to stop gracefully: stop message + SIGTERM; SIGKILL at the deadline."""
        already_signalled = child.state in (S.STOPPING, S.RECYCLING)
        if child.state is not new_state:
            self.change_state(child, new_state, reason)
        deadline = now + (self.cfg.stop_timeout if timeout is None else timeout)
        child.restart_after_stop = restart_after
        if already_signalled:
            # one SIGTERM only (a second makes the child exit at once); keep the earlier deadline
            child.stop_deadline = min(child.stop_deadline or deadline, deadline)
            return
        child.stop_deadline = deadline
        # SIGTERM before the message: were the message first, a quick child could finish and
        # restore the default SIGTERM action before the signal lands, and die "killed by SIGTERM"
        if child.process is not None:
            with contextlib.suppress(ProcessLookupError, OSError, ValueError):
                child.process.terminate()
        # the child's budget, so it can finish (and report what it could not) before our SIGKILL
        self._send(child, {"t": "stop", "deadline_s": round(max(0.0, deadline - now), 3)})

    # ------------------------------------------------------------ child messages

    def _attach_link(self, child: Child, sock: socket.socket) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            sock.close()  # no loop (unit tests drive tick() by hand): no link
            return
        task = loop.create_task(self._read_link(child, child.incarnation, sock),
                                name=f"link-{child.name}-{child.incarnation}")
        self._link_tasks.add(task)
        task.add_done_callback(self._link_tasks.discard)

    async def _read_link(self, child: Child, incarnation: int, sock: socket.socket) -> None:
        try:
            reader, writer = await ipc.open_stream(sock)
        except OSError as exc:
            log.warning("%s: cannot open status link: %s", child.name, exc)
            sock.close()
            return
        if child.incarnation != incarnation or child.process is None:
            writer.close()
            return
        child.writer = writer
        try:
            while True:
                msg = await ipc.read_frame(reader)
                if msg is None:
                    break
                if isinstance(msg, dict):
                    try:
                        self.on_child_message(child, incarnation, msg)
                    except Exception:  # noqa: BLE001 - one bad message must not end the link
                        log.exception("%s: cannot handle status message %.200r", child.name, msg)
        except (ipc.FrameError, ConnectionError) as exc:
            # usually a killed child's socket being reset; its exit is reported by the reaper
            log.info("%s: status link closed: %s", child.name, exc)
        finally:
            if child.writer is writer:
                child.writer = None
            writer.close()

    def on_child_message(self, child: Child, incarnation: int, msg: dict[str, Any]) -> None:
        """A ``ready`` or ``beat`` from a child's status link."""
        if incarnation != child.incarnation or child.process is None:
            return  # from a process already reaped
        now = self._clock()
        kind = msg.get("t")
        if kind == "beat":
            stats = msg.get("stats")
            if isinstance(stats, dict):
                child.stats = stats
                child.last_beat = now
                events, drops = events_and_drops(child.kind, child.totals())
                child.samples.append((now, events, drops))
        elif kind == "ready":
            child.last_beat = now
            dumps = msg.get("dumps")
            if isinstance(dumps, dict) and dumps.get("signal") in DUMP_SIGNALS \
                    and isinstance(dumps.get("file"), str):
                child.dump_signal = int(dumps["signal"])
                child.dump_file = dumps["file"][:4096]
            if child.state is S.STARTING:
                child.ready_at = now
                self.change_state(child, S.RUNNING, "ready")  # STARTING -> RUNNING
                self._wakeup.set()

    def _send(self, child: Child, msg: dict[str, Any]) -> bool:
        writer = child.writer
        if writer is None or writer.is_closing():
            return False
        if writer.transport.get_write_buffer_size() > MAX_LINK_BUFFER:
            return False  # the child stopped reading; don't grow without bound
        try:
            ipc.write_frame(writer, msg)
        except (ConnectionError, RuntimeError):
            return False
        return True

    def _send_children_message(self) -> None:
        """Every second: each child's state and stats, for the publisher's Redis heartbeat."""
        publisher = self.publisher
        if publisher is None or publisher.writer is None:
            return
        children = {
            name: {"state": c.state.value, "pid": c.pid, "stats": c.stats}
            for name, c in self.children.items()
        }
        self._send(publisher, {"t": "children", "children": children})

    @property
    def publisher(self) -> Child | None:
        for child in self.children.values():
            if child.kind == "publisher":
                return child
        return None

    # ------------------------------------------------------------ resources

    def sample_resources(self, now: float) -> None:
        """RSS and FDs of every live child; K consecutive samples over a limit -> RECYCLING."""
        limit_rss = int(self.cfg.max_rss_mb * 1024 * 1024)
        limit_fds = self.cfg.max_fds
        for child in self.children.values():
            if child.process is None:
                continue
            sample = self._sampler(child)
            if sample is None:
                continue
            child.rss, child.fds = sample
            if child.state is not S.RUNNING or self.shutting_down:
                continue
            over = []
            if child.rss > limit_rss:
                over.append(f"RSS {child.rss / 1048576:.0f} MiB > {self.cfg.max_rss_mb:g} MiB")
            if child.fds > limit_fds:
                over.append(f"{child.fds} open fds > {limit_fds}")
            if not over:
                child.over_limit = 0
                continue
            child.over_limit += 1
            if child.over_limit >= self.cfg.over_limit_samples:
                child.recycles += 1
                reason = f"{', '.join(over)} for {child.over_limit} consecutive samples; recycling"
                child.over_limit = 0
                self._begin_stop(child, now, S.RECYCLING, reason)  # RUNNING -> RECYCLING

    # ------------------------------------------------------------ commands

    def handle_command(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        """Control-socket commands; always returns a reply dict."""
        if cmd == "ping":
            return {"ok": True, "pid": os.getpid(), "node_id": self.settings.node_id, "version": __version__}
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        actions = {"restart": self.restart, "stop": self.stop, "start": self.start}
        if cmd not in actions:
            return {"ok": False, "error": f"unknown command {cmd!r}; valid: ping, status, restart, stop, start"}
        name = args.get("name")
        if not isinstance(name, str) or not name:
            return {"ok": False, "error": f"{cmd} needs a name; valid names: {', '.join(self.children)}"}
        return actions[cmd](name)

    def _lookup(self, name: str) -> Child | dict[str, Any]:
        child = self.children.get(name)
        if child is None:
            return {"ok": False, "error": f"unknown name {name!r}; valid names: {', '.join(self.children)}"}
        if self.shutting_down:
            return {"ok": False, "error": "the collector is shutting down"}
        return child

    def _reply(self, child: Child, message: str) -> dict[str, Any]:
        self._wakeup.set()
        return {"ok": True, "name": child.name, "state": child.state.value, "pid": child.pid,
                "message": message}

    def restart(self, name: str) -> dict[str, Any]:
        """Stop gracefully if alive, then spawn fresh; clears FATAL, backoff and crash history."""
        child = self._lookup(name)
        if isinstance(child, dict):
            return child
        now = self._clock()
        child.restarts.clear()
        child.backoff.reset()
        if child.state in (S.STARTING, S.RUNNING):
            self._begin_stop(child, now, S.STOPPING, "restart requested", restart_after=True)
            return self._reply(child, f"{name}: stopping, then starting a fresh process")
        if child.state in (S.STOPPING, S.RECYCLING):
            if child.state is S.STOPPING:
                child.restart_after_stop = True
            return self._reply(child, f"{name}: a fresh process starts once pid {child.pid} exits")
        self.spawn(child, now, "restart requested")  # STOPPED/BACKOFF/FATAL -> STARTING
        return self._reply(child, f"{name}: starting")

    def stop(self, name: str) -> dict[str, Any]:
        """Stop and do not restart (-> STOPPING -> STOPPED)."""
        child = self._lookup(name)
        if isinstance(child, dict):
            return child
        now = self._clock()
        if child.state in (S.STARTING, S.RUNNING, S.RECYCLING):
            self._begin_stop(child, now, S.STOPPING, "stop requested")
            return self._reply(child, f"{name}: stopping")
        if child.state is S.STOPPING:
            child.restart_after_stop = False
            return self._reply(child, f"{name}: already stopping")
        if child.state in (S.BACKOFF, S.FATAL):
            child.next_start_at = None
            self.change_state(child, S.STOPPED, "stop requested")
            return self._reply(child, f"{name}: stopped")
        return self._reply(child, f"{name}: already stopped")

    def start(self, name: str) -> dict[str, Any]:
        """Spawn now from STOPPED/FATAL/BACKOFF (clearing crash history)."""
        child = self._lookup(name)
        if isinstance(child, dict):
            return child
        now = self._clock()
        if child.state in (S.STOPPED, S.FATAL, S.BACKOFF):
            child.restarts.clear()
            child.backoff.reset()
            self.spawn(child, now, "start requested")
            return self._reply(child, f"{name}: starting")
        if child.state is S.STOPPING:
            child.restart_after_stop = True
            return self._reply(child, f"{name}: starts again once pid {child.pid} exits")
        return self._reply(child, f"{name}: already {child.state}")

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """Everything an operator sees, from memory only (JSON-able)."""
        from collector import health

        now = self._clock()
        wall = time.time()
        st: dict[str, Any] = {
            "node_id": self.settings.node_id,
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at_wall,
            "uptime_s": round(now - self.started_at, 1),
            "shutting_down": self.shutting_down,
            "control_socket": str(self.settings.control_socket),
            "http": ({"host": self.settings.http.host, "port": self.http_port}
                     if self.http_port is not None else None),
            "children": {name: self._child_status(c, now) for name, c in self.children.items()},
            "publisher": self._publisher_status(),
        }
        st["health"] = health.evaluate(st, self.settings, wall)
        return st

    def _child_status(self, child: Child, now: float) -> dict[str, Any]:
        stats = child.stats
        totals = child.totals()
        events, drops = events_and_drops(child.kind, totals)
        rate = _rate(child.samples, now, RATE_WINDOW_S) if child.alive() else None
        drops_recent = _delta(child.samples, now, DROPS_WINDOW_S)
        while child.restarts and child.restarts[0] < now - self.cfg.restart_window:
            child.restarts.popleft()
        if child.kind == "publisher":
            last_at = stats.get("last_push_at")
            last_message_at = None
            connection = f"redis {stats['redis']}" if stats.get("redis") else None
            circuit = None
        else:
            last_at = stats.get("last_event_at")
            last_message_at = _num_or_none(stats.get("last_message_at"))
            connection = stats.get("connection")
            circuit = stats.get("circuit")
        last_error = stats.get("last_error") or (child.last_error if child.state is not S.RUNNING else None)
        alive = child.alive()
        entry: dict[str, Any] = {
            "kind": child.kind,
            "state": child.state.value,
            "state_for_s": round(now - child.state_since, 1),
            "pid": child.pid,
            "uptime_s": round(now - child.started_at, 1) if alive and child.started_at is not None else None,
            "restarts": len(child.restarts),
            "total_restarts": child.total_restarts,
            "recycles": child.recycles,
            "hung_kills": child.hung_kills,
            "last_dump": child.last_dump,
            "rss_bytes": child.rss,
            "fds": child.fds,
            "events_total": events,
            "events_per_s": round(rate, 1) if rate is not None else None,
            "drops": drops,
            "drops_60s": drops_recent,
            "last_event_age_s": _age_ms(last_at),
            "last_message_at": last_message_at,
            "connection": connection,
            "circuit": circuit,
            "stale": stats.get("stale") if child.kind == "worker" else None,
            "beat_age_s": round(now - child.last_beat, 1)
            if alive and child.state is S.RUNNING and child.last_beat is not None else None,
            "next_start_in_s": round(max(0.0, child.next_start_at - now), 1)
            if child.state is S.BACKOFF and child.next_start_at is not None else None,
            "last_error": last_error,
            "last_exit": child.last_exit,
        }
        if child.kind == "worker":
            # cumulative over restarts, like the metrics
            for key in WORKER_COUNTERS:
                if key not in ("events_out", "drops"):
                    entry[key] = totals.get(key, 0)
            entry["ws_connections"] = _num_or_none(stats.get("ws_connections"))
            entry["push_connections"] = _num_or_none(stats.get("push_connections"))
            entry["channel"] = stats.get("channel")
            entry["queued_batches"] = _num_or_none(stats.get("queued_batches"))
        else:
            entry["streams"] = totals.get("streams", {})
        return entry

    def _publisher_status(self) -> dict[str, Any]:
        pub = self.publisher
        stats = pub.stats if pub is not None else {}
        out = {k: stats.get(k) for k in ("redis", "workers_connected", "errors")}
        # numbers only: health arithmetic must not trip over a malformed beat
        for k in ("redis_down_since", "redis_errors", "buffered", "buffer_limit", "last_push_at",
                  "listings_emitted", "frame_errors"):
            out[k] = _num_or_none(stats.get(k))
        out["spool"] = stats.get("spool") if isinstance(stats.get("spool"), dict) else None
        totals = pub.totals() if pub is not None else {}
        out["listings_by_event"] = totals.get("listings_by_event") or {}
        out["listing_snapshots_ignored"] = {
            "truncated": totals.get("listing_snapshots_truncated", 0),
            "empty": totals.get("listing_snapshots_empty", 0),
        }
        return out

    def metrics_snapshot(self) -> dict[str, Any]:
        """Cumulative counters and gauges for /metrics (see collector.metrics)."""
        pub = self.publisher
        pstats = pub.stats if pub is not None else {}
        return {
            "children": {
                name: {"kind": c.kind, "state": c.state.value, "total_restarts": c.total_restarts,
                       "recycles": c.recycles, "hung_kills": c.hung_kills, "rss_bytes": c.rss,
                       "fds": c.fds, "totals": c.totals()}
                for name, c in self.children.items()
            },
            "publisher": {"redis": pstats.get("redis"), "buffered": pstats.get("buffered"),
                          "spool": pstats.get("spool") if isinstance(pstats.get("spool"), dict) else None},
        }

    # ------------------------------------------------------------ lifecycle

    def acquire(self) -> str | None:
        """Create the run and log directories and take the node's lock; an error line or None."""
        run_dir = self.settings.run_dir
        try:
            run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if run_dir.stat().st_uid == os.getuid():
                os.chmod(run_dir, 0o700)  # the control socket lives here
            assert self.settings.log_dir is not None
            self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"cannot create run_dir/log_dir: {exc}"
        path = self.settings.lock_file
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            return f"cannot open lock file {path}: {exc.strerror}"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            return (f"another collector with node id {self.settings.node_id} is running "
                    f"(pid {holder}); lock file {path}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        return None

    def release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def request_shutdown(self, sig: int = signal.SIGTERM) -> None:
        """Signal handler body: record it and wake the loop (no logging, no work)."""
        if len(self._signals) < 8:
            self._signals.append(sig)
        self._wakeup.set()

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (0) or the publisher goes FATAL (1); 2 if we cannot start."""
        own_lock = self._lock_fd is None
        if own_lock:
            err = self.acquire()
            if err:
                log.error("%s", err)
                return 2
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.request_shutdown, sig)
                installed.append(sig)
        self.started_at_wall, self.started_at = time.time(), self._clock()
        try:
            err = await self._start_servers()
            if err:
                log.error("%s", err)
                return 2
            log.info("collector %s starting: node %s, pid %d, children: %s", __version__,
                     self.settings.node_id, os.getpid(), ", ".join(self.children))
            try:
                await self._start_children()
                code = await self._main_loop()
            except Exception:  # a supervisor bug: stop cleanly and let the outer supervisor restart us
                log.exception("supervisor loop failed; shutting down")
                code = 1
            await self._shutdown()
            return code
        finally:
            await self._close_servers()
            for task in list(self._link_tasks):
                task.cancel()
            for sig in installed:
                loop.remove_signal_handler(sig)
            if own_lock:
                self.release()

    async def _start_servers(self) -> str | None:
        from collector.control import ControlServer

        self._control = ControlServer(self.settings.control_socket, self.handle_command)
        try:
            await self._control.start()
        except OSError as exc:
            self._control = None
            return f"cannot create control socket {self.settings.control_socket}: {exc}"
        if self.settings.http.enabled:
            from collector.http import HttpServer

            http = HttpServer(self, self.settings.http.host, self.settings.http.port)
            try:
                _, self.http_port = await http.start()
            except OSError as exc:
                return f"HTTP: cannot listen on {self.settings.http.host}:{self.settings.http.port}: {exc.strerror or exc}"
            self._http = http
        return None

    async def _close_servers(self) -> None:
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
            self._http = None
        if self._control is not None:
            with contextlib.suppress(Exception):
                await self._control.close()
            self._control = None

    async def _start_children(self) -> None:
        """The publisher first (workers connect to it), then the workers."""
        now = self._clock()
        pub = self.publisher
        if pub is not None:
            self.spawn(pub, now, "initial start")
            deadline = now + PUBLISHER_HEAD_START_S
            while pub.state is S.STARTING and self._clock() < deadline and not self._signals:
                await self._sleep(0.05)
                self.tick()
            if pub.state is S.FATAL:
                return  # the main loop stops the collector; workers would have nowhere to send
        for child in self.children.values():
            if child.state is S.STOPPED and not self._signals:
                self.spawn(child, self._clock(), "initial start")

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=seconds)
        self._wakeup.clear()

    async def _main_loop(self) -> int:
        while True:
            if self._signals:
                log.info("received %s: graceful shutdown", signal.Signals(self._signals[0]).name)
                self._signals.clear()
                return 0
            self.tick()
            pub = self.publisher
            if pub is not None and pub.state is S.FATAL:
                log.error("publisher is FATAL (%s); stopping the collector with exit code 1",
                          pub.last_error or pub.last_exit)
                return 1
            await self._sleep(TICK_S)

    async def _shutdown(self) -> None:
        """Workers first while the publisher drains; then the publisher; each with a deadline."""
        self.shutting_down = True
        self._workers_draining = True
        start = self._clock()
        total = self.cfg.shutdown_timeout
        workers = [c for c in self.children.values() if c.kind != "publisher"]
        workers_deadline = start + 0.6 * total
        for child in workers:
            self._stop_for_shutdown(child, start, workers_deadline)
        await self._wait_exited(workers, workers_deadline + 2.0)
        self._workers_draining = False
        pub = self.publisher
        if pub is not None:
            now = self._clock()
            self._stop_for_shutdown(pub, now, max(start + total, now + 1.0))
            await self._wait_exited([pub], max(start + total, now + 1.0) + 2.0)
        stragglers = [c.name for c in self.children.values() if c.alive()]
        if stragglers:
            log.error("shutdown: %s still alive after SIGKILL", ", ".join(stragglers))
        log.info("shutdown complete in %.1fs", self._clock() - start)

    def _stop_for_shutdown(self, child: Child, now: float, deadline: float) -> None:
        if child.state in (S.STARTING, S.RUNNING, S.RECYCLING, S.STOPPING):
            self._begin_stop(child, now, S.STOPPING, "shutdown", timeout=max(0.0, deadline - now))
            child.restart_after_stop = False
        elif child.state is S.BACKOFF:
            self.change_state(child, S.STOPPED, "shutdown")  # BACKOFF -> STOPPED

    async def _wait_exited(self, children: list[Child], until: float) -> None:
        """Tick (reap; SIGKILL past each stop deadline) until they are gone or ``until``."""
        while self._clock() < until:
            if self._signals:  # a second signal: no more patience
                self._signals.clear()
                if not self._hurry:
                    log.warning("second signal during shutdown: killing remaining children now")
                self._hurry = True
            if self._hurry:
                now = self._clock()
                for child in children:
                    if child.stop_deadline is not None:
                        child.stop_deadline = min(child.stop_deadline, now)
            self.tick()
            if all(not c.alive() for c in children):
                if not any(c.state is S.BACKOFF for c in children):
                    return
            for child in children:
                if child.state is S.BACKOFF and not self._may_start(child):
                    self.change_state(child, S.STOPPED, "shutdown")
            await self._sleep(0.05)


def _rate(samples: deque, now: float, window: float) -> float | None:
    """Events per second over roughly the last ``window`` seconds of beats."""
    if len(samples) < 2:
        return None
    newest = samples[-1]
    base = samples[0]
    for sample in reversed(samples):
        if newest[0] - sample[0] >= window:
            base = sample
            break
    dt = newest[0] - base[0]
    if dt <= 0:
        return None
    return max(0.0, (newest[1] - base[1]) / dt)


def _delta(samples: deque, now: float, window: float) -> int:
    """Drops counted within the last ``window`` seconds."""
    if not samples:
        return 0
    newest = samples[-1]
    base = samples[0]
    for sample in reversed(samples):
        if now - sample[0] >= window:
            base = sample
            break
    return int(max(0, newest[2] - base[2]))


def _num_or_none(v: Any) -> float | int | None:
    return v if _is_num(v) else None


def _age_ms(ms: Any) -> float | None:
    if not _is_num(ms):
        return None
    return round(max(0.0, time.time() - ms / 1000.0), 1)


def main(settings: Settings) -> int:
    """``collector run``: lock, log, supervise; the process exit code."""
    from collector.logs import setup_logging

    sup = Supervisor(settings)
    err = sup.acquire()
    if err:
        print(err, file=sys.stderr)
        return 2
    setup_logging(settings, "collector", to_stderr=True)
    try:
        return asyncio.run(sup.run())
    except KeyboardInterrupt:  # Ctrl-C before the loop's handler was installed
        return 130
    finally:
        sup.release()
