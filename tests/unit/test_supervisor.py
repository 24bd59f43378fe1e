"""The supervisor: its state machine driven by a fake clock and fake processes, then a few runs
with real spawned dummy children (ready, kill -9, leak, graceful stop, lock)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from collector.supervisor import (
    ALLOWED,
    ChildSpec,
    InvalidTransition,
    Supervisor,
    describe_exit,
    merge_counters,
)
from shared.backoff import Backoff
from shared.settings import Settings
from shared.states import EXIT_CONFIG, ProcessState

S = ProcessState


# ---------------------------------------------------------------- fakes

class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t


class FakeProcess:
    """Stands in for multiprocessing.Process: the test decides when it exits."""

    _next_pid = 50000

    def __init__(self) -> None:
        FakeProcess._next_pid += 1
        self.pid = FakeProcess._next_pid
        self._exitcode: int | None = None
        self.signals: list[str] = []
        self.closed = False
        self.exit_on_term: int | None = None  # exit code to take when terminated, if any

    @property
    def exitcode(self) -> int | None:
        return self._exitcode

    def exit(self, code: int) -> None:
        self._exitcode = code

    def terminate(self) -> None:
        self.signals.append("TERM")
        if self.exit_on_term is not None:
            self._exitcode = self.exit_on_term

    def kill(self) -> None:
        self.signals.append("KILL")
        self._exitcode = -signal.SIGKILL

    def send_signal(self, sig: int) -> None:
        self.signals.append(signal.Signals(sig).name.removeprefix("SIG"))

    def close(self) -> None:
        self.closed = True


class FakeLauncher:
    def __init__(self) -> None:
        self.launched: list[tuple[str, FakeProcess]] = []
        self.fail_next = False

    def __call__(self, child) -> tuple[FakeProcess, None]:
        if self.fail_next:
            self.fail_next = False
            raise OSError(24, "Too many open files")
        proc = FakeProcess()
        self.launched.append((child.name, proc))
        return proc, None


def _noop(*_args: Any) -> None:  # never called with fake launchers
    raise AssertionError("fake children are not run")


def make_settings(run_dir: Path, **supervisor: Any) -> Settings:
    cfg = {"backoff_initial": 1.0, "backoff_max": 60.0, "stable_after": 60.0, "max_restarts": 5,
           "restart_window": 300.0, "ready_timeout": 30.0, "beat_timeout": 30.0, "sample_interval": 5.0,
           "max_rss_mb": 100.0, "max_fds": 64, "over_limit_samples": 3, "stop_timeout": 10.0}
    cfg.update(supervisor)
    return Settings(run_dir=run_dir, supervisor=cfg, http={"enabled": False})


class Rig:
    """A supervisor with fake processes, a fake clock and a scripted resource sampler."""

    def __init__(self, tmp_path: Path, names: tuple[str, ...] = ("publisher", "binance"),
                 clock: Any = None, **cfg: Any) -> None:
        self.clock = clock or FakeClock()
        self.launcher = FakeLauncher()
        self.samples: dict[str, tuple[int, int]] = {}
        specs = [ChildSpec(n, "publisher" if n == "publisher" else "worker", _noop, ()) for n in names]
        self.sup = Supervisor(make_settings(tmp_path, **cfg), specs=specs, launcher=self.launcher,
                              sampler=lambda c: self.samples.get(c.name), clock=self.clock)
        # deterministic jitter
        for child in self.sup.children.values():
            child.backoff = Backoff(self.sup.cfg.backoff_initial, self.sup.cfg.backoff_max, rng=random.Random(7))

    def child(self, name: str = "binance"):
        return self.sup.children[name]

    def proc(self, name: str = "binance") -> FakeProcess:
        proc = self.child(name).process
        assert proc is not None, f"{name} has no process"
        return proc  # type: ignore[return-value]

    def start(self, name: str = "binance") -> None:
        self.sup.spawn(self.child(name), self.clock(), "test start")

    def ready(self, name: str = "binance", dumps: Any = None) -> None:
        c = self.child(name)
        msg = {"t": "ready", "pid": c.pid}
        if dumps is not None:
            msg["dumps"] = dumps
        self.sup.on_child_message(c, c.incarnation, msg)

    def beat(self, name: str = "binance", **stats: Any) -> None:
        c = self.child(name)
        self.sup.on_child_message(c, c.incarnation, {"t": "beat", "stats": stats})

    def tick(self, dt: float = 0.0) -> None:
        self.sup.tick(self.clock.advance(dt))

    def running(self, name: str = "binance") -> None:
        self.start(name)
        self.ready(name)
        assert self.child(name).state is S.RUNNING

    def crash_and_restart(self, name: str = "binance", code: int = 1) -> float:
        """Crash the RUNNING child; return the backoff delay it was given."""
        self.proc(name).exit(code)
        self.tick()
        c = self.child(name)
        assert c.state is S.BACKOFF
        delay = c.next_start_at - self.clock()
        self.tick(delay + 0.01)
        assert c.state is S.STARTING
        self.ready(name)
        return delay


# ---------------------------------------------------------------- state machine (fake clock)

def test_transition_table_rejects_edges_not_listed(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    c = rig.child()
    assert c.state is S.STOPPED
    with pytest.raises(InvalidTransition):
        rig.sup.change_state(c, S.RUNNING, "no readiness without a start")
    with pytest.raises(InvalidTransition):
        rig.sup.change_state(c, S.RECYCLING, "nothing to recycle")
    rig.running()
    with pytest.raises(InvalidTransition):
        rig.sup.change_state(c, S.STOPPED, "must go through STOPPING")
    # every state may reach at least one other, and every state has its row
    assert set(ALLOWED) == set(ProcessState)
    assert all(ALLOWED[s] for s in ProcessState)
    # FATAL is left only by a start (restart/start command) or a stop
    assert ALLOWED[S.FATAL] == {S.STARTING, S.STOPPED}


def test_start_ready_running_and_state_times(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    c = rig.child()
    assert c.state is S.STARTING and c.pid == rig.proc().pid
    rig.clock.advance(2)
    rig.ready()
    assert c.state is S.RUNNING
    assert c.state_since == rig.clock() and c.ready_at == rig.clock()


def test_crash_backoff_doubles_with_jitter_and_caps(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_restarts=100, backoff_initial=1.0, backoff_max=60.0)
    rig.running()
    delays = [rig.crash_and_restart() for _ in range(9)]
    bases = [1, 2, 4, 8, 16, 32, 60, 60, 60]
    for delay, base in zip(delays, bases):
        assert base / 2 - 0.02 <= delay <= base + 0.02, (delays, bases)
    assert len(set(round(d, 3) for d in delays[6:])) > 1, "jitter: capped delays are not all equal"
    c = rig.child()
    assert c.total_restarts == 9 and c.last_exit == "exit 1"
    assert c.state is S.RUNNING


def test_backoff_resets_after_a_stable_run(tmp_path: Path) -> None:
    rig = Rig(tmp_path, stable_after=60.0, max_restarts=100, beat_timeout=1000.0)
    rig.running()
    for _ in range(4):
        rig.crash_and_restart()
    c = rig.child()
    assert c.backoff.attempts == 4
    rig.tick(59)
    assert c.backoff.attempts == 4, "not stable yet"
    rig.tick(1.5)
    assert c.backoff.attempts == 0
    delay = rig.crash_and_restart()
    assert 0.5 - 0.02 <= delay <= 1.0 + 0.02


def test_too_many_crashes_in_window_is_fatal_and_not_restarted(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_restarts=3, restart_window=300.0, beat_timeout=10000.0)
    rig.running()
    for _ in range(3):
        rig.crash_and_restart()
    rig.proc().exit(1)
    rig.tick()
    c = rig.child()
    assert c.state is S.FATAL
    assert "4 crashes within 300s" in c.last_error
    before = len(rig.launcher.launched)
    rig.tick(3600)
    assert c.state is S.FATAL and len(rig.launcher.launched) == before, "FATAL is never auto-restarted"


def test_crashes_spread_beyond_the_window_are_not_fatal(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_restarts=2, restart_window=100.0, stable_after=1000.0, beat_timeout=1000.0)
    rig.running()
    for _ in range(6):
        rig.crash_and_restart()
        rig.tick(101)  # the previous crashes age out of the window
    assert rig.child().state is S.RUNNING
    assert rig.child().total_restarts == 6
    assert rig.sup.status()["children"]["binance"]["restarts"] == 0


def test_exit_config_is_fatal_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    rig.proc().exit(EXIT_CONFIG)
    rig.tick()
    c = rig.child()
    assert c.state is S.FATAL
    assert c.last_exit == f"exit {EXIT_CONFIG}" and c.total_restarts == 1
    assert rig.sup.status()["children"]["binance"]["last_error"].startswith("configuration error (exit 3)")
    rig.tick(1000)
    assert c.state is S.FATAL


def test_ready_timeout_kills_and_counts_as_crash(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ready_timeout=30.0)
    rig.start()
    proc = rig.proc()
    rig.tick(29)
    assert proc.signals == []
    rig.tick(2)
    assert proc.signals == ["KILL"]
    rig.tick()
    c = rig.child()
    assert c.state is S.BACKOFF and c.total_restarts == 1
    assert "not ready within 30s" in c.last_error
    assert c.last_exit.startswith("killed by SIGKILL (not ready")


def test_hung_child_without_beats_is_killed_as_a_crash(tmp_path: Path) -> None:
    rig = Rig(tmp_path, beat_timeout=30.0)
    rig.running()
    proc = rig.proc()
    for _ in range(40):
        rig.beat(events_out=1)
        rig.tick(1)
    assert proc.signals == []
    rig.tick(31)  # no more beats
    assert proc.signals == ["KILL"], "no dump signal announced in `ready`: SIGKILL at once"
    rig.tick()
    c = rig.child()
    assert c.state is S.BACKOFF and "hung" in c.last_error and c.total_restarts == 1
    assert c.hung_kills == 1 and c.last_dump is None


DUMPS = {"signal": int(signal.SIGUSR1), "file": "/var/log/collector/binance.log"}


@pytest.mark.parametrize("name", ["binance", "publisher"])
def test_hung_child_is_dumped_then_killed_after_the_grace(tmp_path: Path, name: str) -> None:
    rig = Rig(tmp_path, beat_timeout=30.0, hung_dump_grace=0.5)
    dumps = {"signal": int(signal.SIGUSR1), "file": f"/var/log/collector/{name}.log"}
    rig.start(name)
    rig.ready(name, dumps=dumps)
    c, proc = rig.child(name), rig.proc(name)
    rig.beat(name, events_out=1)
    rig.tick(30)
    assert proc.signals == [], "30 s without a beat is not yet over the timeout"
    rig.tick(1)
    assert proc.signals == ["USR1"], "the stack dump is asked for first"
    assert c.state is S.RUNNING and c.hung_kills == 1
    rig.beat(name, events_out=2)  # a late beat does not undo the decision
    rig.tick(0.4)
    assert proc.signals == ["USR1"], "SIGKILL waits for the grace"
    rig.tick(0.11)
    assert proc.signals == ["USR1", "KILL"]
    rig.tick()
    assert c.state is S.BACKOFF and c.total_restarts == 1
    assert c.last_error == f"hung: no heartbeat for 31s; stacks dumped to {name}.log"
    assert c.last_exit == f"killed by SIGKILL (hung: no heartbeat for 31s; stacks dumped to {name}.log)"
    st = rig.sup.status()["children"][name]
    assert st["hung_kills"] == 1 and st["restarts"] == 1
    assert st["last_dump"]["file"] == dumps["file"] and st["last_dump"]["pid"] == proc.pid
    assert st["last_dump"]["signal"] == "SIGUSR1"
    assert rig.sup.metrics_snapshot()["children"][name]["hung_kills"] == 1
    # the replacement starts without the old dump settings until its own `ready`
    rig.tick(c.next_start_at - rig.clock() + 0.01)
    assert c.state is S.STARTING and c.dump_signal is None and c.kill_at is None
    rig.ready(name, dumps=dumps)
    new = rig.proc(name)
    for _ in range(40):
        rig.beat(name, events_out=1)
        rig.tick(1)
    assert new.signals == [] and c.state is S.RUNNING
    assert st["last_dump"] == rig.sup.status()["children"][name]["last_dump"], "kept after restart"


def test_hung_dump_grace_zero_kills_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, beat_timeout=5.0, hung_dump_grace=0.0)
    rig.start()
    rig.ready(dumps=DUMPS)
    rig.tick(6)
    assert rig.proc().signals == ["KILL"]
    assert rig.child().hung_kills == 1 and rig.child().last_dump is None


@pytest.mark.parametrize("dumps", [
    {"signal": int(signal.SIGKILL), "file": "x.log"},   # only the user signals are accepted
    {"signal": int(signal.SIGTERM), "file": "x.log"},   # (a SIGTERM would start a graceful stop)
    {"signal": "SIGUSR1", "file": "x.log"},
    {"signal": int(signal.SIGUSR1), "file": 5},
    ["SIGUSR1"],
])
def test_malformed_dump_announcements_are_ignored(tmp_path: Path, dumps: Any) -> None:
    rig = Rig(tmp_path, beat_timeout=5.0)
    rig.start()
    rig.ready(dumps=dumps)
    assert rig.child().state is S.RUNNING and rig.child().dump_signal is None
    rig.tick(6)
    assert rig.proc().signals == ["KILL"]


def test_stop_during_the_dump_grace_still_kills_at_the_grace(tmp_path: Path) -> None:
    rig = Rig(tmp_path, beat_timeout=5.0, hung_dump_grace=2.0, stop_timeout=10.0)
    rig.start()
    rig.ready(dumps=DUMPS)
    proc = rig.proc()
    rig.tick(6)
    assert proc.signals == ["USR1"]
    rig.sup.stop("binance")  # the operator gives up on it meanwhile
    assert rig.child().state is S.STOPPING and proc.signals == ["USR1", "TERM"]
    rig.tick(1.0)
    assert proc.signals == ["USR1", "TERM"]
    rig.tick(1.1)
    assert proc.signals == ["USR1", "TERM", "KILL"], "the hung kill does not wait for stop_timeout"
    rig.tick()
    c = rig.child()
    assert c.state is S.STOPPED and c.total_restarts == 0 and c.hung_kills == 1


def test_recycle_after_k_consecutive_samples_is_not_a_crash(tmp_path: Path) -> None:
    rig = Rig(tmp_path, sample_interval=5.0, max_rss_mb=100.0, over_limit_samples=3, stop_timeout=10.0)
    rig.running()
    c = rig.child()
    big = 150 * 1024 * 1024
    rig.samples["binance"] = (big, 10)
    rig.tick(5)
    rig.tick(5)
    rig.samples["binance"] = (10 * 1024 * 1024, 10)  # a dip resets the count (hysteresis)
    rig.tick(5)
    rig.samples["binance"] = (big, 10)
    rig.tick(5)
    rig.tick(5)
    assert c.state is S.RUNNING and c.over_limit == 2
    old = rig.proc()
    rig.tick(5)
    assert c.state is S.RECYCLING and c.recycles == 1
    assert old.signals == ["TERM"]
    old.exit(0)
    rig.tick()
    assert c.state is S.STARTING and rig.proc() is not old, "replaced at once, no backoff"
    assert c.total_restarts == 0 and len(c.restarts) == 0 and c.backoff.attempts == 0
    assert old.closed


def test_fd_limit_recycle_and_sigkill_after_stop_timeout(tmp_path: Path) -> None:
    rig = Rig(tmp_path, sample_interval=1.0, max_fds=64, over_limit_samples=2, stop_timeout=10.0)
    rig.running()
    c = rig.child()
    rig.samples["binance"] = (1024, 500)
    rig.tick(1)
    rig.tick(1)
    assert c.state is S.RECYCLING
    old = rig.proc()
    rig.tick(9)
    assert old.signals == ["TERM"]
    rig.tick(1.5)
    assert old.signals == ["TERM", "KILL"]
    rig.tick()
    assert c.state is S.STARTING and c.recycles == 1 and c.total_restarts == 0


def test_stop_goes_to_stopped_and_is_not_restarted(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.running()
    proc = rig.proc()
    reply = rig.sup.stop("binance")
    assert reply["ok"] and reply["state"] == "STOPPING"
    assert proc.signals == ["TERM"]
    proc.exit(0)
    rig.tick()
    c = rig.child()
    assert c.state is S.STOPPED and c.total_restarts == 0
    rig.tick(3600)
    assert c.state is S.STOPPED and len(rig.launcher.launched) == 1
    assert rig.sup.start("binance")["state"] == "STARTING"


def test_stop_from_backoff_cancels_the_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.running()
    rig.proc().exit(1)
    rig.tick()
    assert rig.child().state is S.BACKOFF
    rig.sup.stop("binance")
    rig.tick(120)
    assert rig.child().state is S.STOPPED and len(rig.launcher.launched) == 1


def test_restart_clears_fatal_backoff_and_history(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_restarts=1)
    rig.running()
    rig.crash_and_restart()
    rig.proc().exit(1)
    rig.tick()
    c = rig.child()
    assert c.state is S.FATAL
    reply = rig.sup.restart("binance")
    assert reply["ok"] and reply["state"] == "STARTING"
    assert len(c.restarts) == 0 and c.backoff.attempts == 0
    rig.ready()
    # a crash now is the first in the window again: BACKOFF, not FATAL
    rig.proc().exit(1)
    rig.tick()
    assert c.state is S.BACKOFF


def test_restart_of_a_running_child_stops_then_spawns(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.running()
    old = rig.proc()
    reply = rig.sup.restart("binance")
    assert reply["state"] == "STOPPING" and old.signals == ["TERM"]
    rig.tick(1)
    assert rig.child().state is S.STOPPING
    old.exit(0)
    rig.tick()
    c = rig.child()
    assert c.state is S.STARTING and rig.proc() is not old
    assert c.total_restarts == 0, "an operator restart is not a crash"


def test_unknown_names_and_commands_are_errors(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    for cmd in ("restart", "stop", "start"):
        reply = rig.sup.handle_command(cmd, {"name": "nope"})
        assert not reply["ok"] and "publisher, binance" in reply["error"]
    assert not rig.sup.handle_command("restart", {})["ok"]
    assert not rig.sup.handle_command("reboot", {"name": "binance"})["ok"]
    assert rig.sup.handle_command("ping", {})["ok"]


def test_spawn_failure_counts_as_crash_and_backs_off(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.launcher.fail_next = True
    rig.start()
    c = rig.child()
    assert c.state is S.BACKOFF and "Too many open files" in c.last_error
    rig.tick(1.1)
    assert c.state is S.STARTING


def test_shutdown_stops_workers_first_even_one_already_stopping(tmp_path: Path) -> None:
    class RealClock:
        def __call__(self) -> float:
            return time.monotonic()

        def advance(self, dt: float) -> float:
            return time.monotonic()

    rig = Rig(tmp_path, names=("publisher", "binance", "okx"), clock=RealClock(),
              shutdown_timeout=0.5, stop_timeout=30.0)
    for name in ("publisher", "binance", "okx"):
        rig.running(name)
    rig.proc("publisher").exit_on_term = 0
    rig.proc("okx").exit_on_term = 0
    stubborn = rig.proc("binance")  # ignores SIGTERM
    rig.sup.stop("binance")  # an operator stop in progress (deadline 30 s away)
    publisher = rig.proc("publisher")
    order: list[str] = []
    publisher.terminate = lambda: (order.append("publisher TERM"), FakeProcess.terminate(publisher))[1]  # type: ignore[method-assign]
    stubborn.kill = lambda: (order.append("binance KILL"), FakeProcess.kill(stubborn))[1]  # type: ignore[method-assign]

    asyncio.run(asyncio.wait_for(rig.sup._shutdown(), timeout=10))
    assert order == ["binance KILL", "publisher TERM"], "workers are gone before the publisher is stopped"
    assert stubborn.signals == ["TERM", "KILL"], "one SIGTERM, then SIGKILL at the shutdown deadline"
    states = {n: (c.state, c.last_exit) for n, c in rig.sup.children.items()}
    assert states == {"publisher": (S.STOPPED, "exit 0"), "okx": (S.STOPPED, "exit 0"),
                      "binance": (S.STOPPED, "killed by SIGKILL (did not stop in time)")}


def test_exit_descriptions() -> None:
    assert describe_exit(0) == "exit 0"
    assert describe_exit(3) == "exit 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL (out of memory?)"
    assert describe_exit(-signal.SIGTERM) == "killed by SIGTERM"
    assert describe_exit(-signal.SIGKILL, "hung") == "killed by SIGKILL (hung)"


def test_counters_carry_across_incarnations(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.running("publisher")
    rig.running()
    rig.beat(events_out=100, drops=3, ws_reconnects=2, connection="connected")
    rig.beat("publisher", streams={"binance|trade": {"in": 100, "pushed": 90, "deduped": 5, "dropped": 1}},
             latency={"buckets": [[0.001, 10], [0.01, 80]], "sum": 0.5, "count": 90})
    rig.crash_and_restart()
    rig.crash_and_restart("publisher")
    rig.beat(events_out=7, drops=0)
    rig.beat("publisher", streams={"binance|trade": {"in": 7, "pushed": 7}},
             latency={"buckets": [[0.001, 7], [0.01, 7]], "sum": 0.01, "count": 7})
    snap = rig.sup.metrics_snapshot()
    w = snap["children"]["binance"]["totals"]
    assert w["events_out"] == 107 and w["drops"] == 3 and w["ws_reconnects"] == 2
    p = snap["children"]["publisher"]["totals"]
    assert p["streams"]["binance|trade"] == {"in": 107, "pushed": 97, "deduped": 5, "dropped": 1}
    assert p["latency"] == {"buckets": [[0.001, 17], [0.01, 87]], "sum": 0.51, "count": 97}
    assert merge_counters({}, {"connection": "connected"}) == {}


def test_status_rates_and_recent_drops(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.running("publisher")
    rig.running()
    for i in range(10):
        rig.clock.advance(1)
        rig.beat(events_out=100 * i, drops=0 if i < 8 else 4, connection="connected", circuit="CLOSED",
                 stale=False, last_message_at=int(time.time() * 1000))
    st = rig.sup.status()["children"]["binance"]
    assert st["events_per_s"] == pytest.approx(100.0)
    assert st["drops"] == 4 and st["drops_60s"] == 4
    assert st["connection"] == "connected" and st["circuit"] == "CLOSED"
    rig.clock.advance(61)
    rig.beat(events_out=1000, drops=4, last_message_at=int(time.time() * 1000))
    st = rig.sup.status()
    assert st["children"]["binance"]["drops_60s"] == 0
    assert st["children"]["binance"]["restarts"] == 0


def test_publisher_gets_children_message_each_second(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.running("publisher")
    rig.running()
    sent: list[dict] = []
    rig.sup._send = lambda child, msg: sent.append((child.name, msg)) or True  # type: ignore[method-assign]
    rig.sup.publisher.writer = object()  # type: ignore[assignment]
    rig.tick(0.1)
    rig.tick(0.5)
    rig.tick(0.6)
    msgs = [m for name, m in sent if m.get("t") == "children"]
    assert len(msgs) == 2 and all(name == "publisher" for name, _ in sent)
    assert msgs[0]["children"]["binance"]["state"] == "RUNNING"
    assert msgs[0]["children"]["binance"]["pid"] == rig.child().pid


# ---------------------------------------------------------------- real processes

def dummy_child(name: str, workdir: str, mode: str, status_sock) -> None:
    """A tiny child for real supervisor runs: ready, beat, and misbehave on demand."""
    from shared.child import run_child

    work = Path(workdir)

    async def main(link) -> int:
        counter = {"events_out": 0}

        def stats() -> dict:
            counter["events_out"] += 10
            return {"exchange": name, "events_out": counter["events_out"], "drops": 0,
                    "connection": "connected", "circuit": "CLOSED", "stale": False,
                    "last_message_at": int(time.time() * 1000), "last_event_at": int(time.time() * 1000)}

        if mode == "config":
            return EXIT_CONFIG
        if mode == "hang":
            from shared.child import enable_stack_dumps

            enable_stack_dumps(work / f"{name}.log")
        await link.start(stats)
        leak = work / f"leak-{name}"
        hoard = None
        if mode == "leak" and leak.exists():
            leak.unlink()
            hoard = bytearray(b"\x01") * (200 * 1024 * 1024)  # touched pages: real RSS
        (work / f"ready-{name}-{os.getpid()}").write_text("")  # before `ready`: no race with the test
        link.ready()
        hang_marker = work / f"hung-{name}"
        if mode == "hang" and not hang_marker.exists():
            hang_marker.write_text(str(os.getpid()))
            await asyncio.sleep(0.3)
            _dummy_block_loop()
        await link.stop_requested.wait()
        if mode == "slowstop":
            await asyncio.sleep(0.3)
        (work / f"stopped-{name}").write_text(f"{time.monotonic()}")
        del hoard
        return 0

    sys.exit(run_child(name, main, status_sock))


def _dummy_block_loop() -> None:
    while True:
        time.sleep(3600)


def real_supervisor(tmp: Path, modes: dict[str, str], **cfg: Any) -> Supervisor:
    base = {"backoff_initial": 0.1, "backoff_max": 0.5, "sample_interval": 0.2, "over_limit_samples": 2,
            "max_rss_mb": 150.0, "stop_timeout": 5.0, "shutdown_timeout": 10.0, "ready_timeout": 20.0,
            "beat_timeout": 10.0}
    base.update(cfg)
    settings = make_settings(tmp, **base)
    specs = [ChildSpec(n, "publisher" if n == "publisher" else "worker", dummy_child, (n, str(tmp), m))
             for n, m in modes.items()]
    return Supervisor(settings, specs=specs)


async def wait_for(pred, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _all_running(sup: Supervisor) -> bool:
    return all(c.state is S.RUNNING for c in sup.children.values())


def test_real_children_ready_kill9_restart_and_graceful_sigterm(short_tmp: Path) -> None:
    sup = real_supervisor(short_tmp, {"publisher": "ok", "w1": "ok", "w2": "ok"})

    async def scenario() -> int:
        task = asyncio.create_task(sup.run())
        await wait_for(lambda: _all_running(sup), what="all RUNNING")
        assert oct(os.stat(sup.settings.control_socket).st_mode & 0o777) == "0o600"
        assert sup.settings.lock_file.read_text().strip() == str(os.getpid())
        w1 = sup.children["w1"]
        old_pid = w1.pid
        os.kill(old_pid, signal.SIGKILL)
        await wait_for(lambda: w1.state is S.BACKOFF or w1.total_restarts, what="crash noticed")
        await wait_for(lambda: w1.state is S.RUNNING and w1.pid not in (None, old_pid), what="w1 back")
        st = sup.status()["children"]["w1"]
        assert st["restarts"] == 1 and st["total_restarts"] == 1
        assert st["last_exit"] == "killed by SIGKILL (out of memory?)"
        assert sup.children["w2"].total_restarts == 0
        await wait_for(lambda: sup.status()["children"]["w2"]["events_per_s"], what="a rate from beats")
        # SIGTERM to ourselves: the loop's handler turns it into a graceful shutdown
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(task, timeout=30)

    assert asyncio.run(scenario()) == 0
    for name in ("publisher", "w1", "w2"):
        c = sup.children[name]
        assert c.state is S.STOPPED and c.last_exit == "exit 0", (name, c.state, c.last_exit)
    stopped = {n: float((short_tmp / f"stopped-{n}").read_text()) for n in ("publisher", "w1", "w2")}
    assert stopped["publisher"] > max(stopped["w1"], stopped["w2"]), "workers stop before the publisher"
    assert not sup.settings.control_socket.exists()


def test_real_hung_child_is_dumped_killed_and_replaced(short_tmp: Path) -> None:
    sup = real_supervisor(short_tmp, {"publisher": "ok", "w1": "hang"}, beat_timeout=1.0,
                          hung_dump_grace=0.5, backoff_initial=0.1)

    async def scenario() -> None:
        task = asyncio.create_task(sup.run())
        w1 = sup.children["w1"]
        await wait_for(lambda: w1.hung_kills >= 1, what="the hang noticed")
        await wait_for(lambda: w1.state is S.RUNNING and w1.total_restarts == 1, what="w1 replaced")
        sup.request_shutdown()
        assert await asyncio.wait_for(task, timeout=30) == 0

    asyncio.run(scenario())
    w1 = sup.children["w1"]
    hung_pid = int((short_tmp / "hung-w1").read_text())
    assert w1.hung_kills == 1 and w1.last_dump is not None and w1.last_dump["pid"] == hung_pid
    assert w1.last_dump["file"] == str(short_tmp / "w1.log")
    assert w1.last_exit == "exit 0", "the replacement stopped gracefully"
    dump = (short_tmp / "w1.log").read_text()
    # faulthandler's format: the blocked thread's stack, innermost call first
    assert "(most recent call first)" in dump
    assert 'line' in dump and "in _dummy_block_loop" in dump and "test_supervisor.py" in dump
    assert sup.children["publisher"].hung_kills == 0


def _rotate_then_dump(run_dir: str) -> None:
    """In a fresh process: log until the file rotates, then ask ourselves for a stack dump."""
    import logging

    from collector.logs import setup_logging
    from shared.child import DUMP_SIGNAL, stack_dumps_target

    settings = Settings(run_dir=Path(run_dir), log_max_bytes=4096, log_backups=2, http={"enabled": False})
    setup_logging(settings, "w1")
    log_file = settings.log_file("w1")
    for i in range(200):
        logging.getLogger("w1").info("line %d %s", i, "x" * 60)
        if log_file.with_name("w1.log.1").exists():
            break
    assert stack_dumps_target() == str(log_file)
    os.kill(os.getpid(), DUMP_SIGNAL)  # the handler runs in C, before kill() returns to Python
    logging.getLogger("w1").info("still alive after the dump")


def test_stack_dumps_follow_the_log_file_across_rotation(short_tmp: Path) -> None:
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(target=_rotate_then_dump, args=(str(short_tmp),))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    logs = short_tmp / "logs"
    current, rotated = (logs / "w1.log").read_text(), (logs / "w1.log.1").read_text()
    assert "(most recent call first)" in current and "in _rotate_then_dump" in current
    assert current.index("in _rotate_then_dump") < current.index("still alive after the dump")
    assert "most recent call first" not in rotated, "not written into the rotated file"


def test_real_leaking_child_is_recycled_not_crashed(short_tmp: Path) -> None:
    (short_tmp / "leak-w1").write_text("")
    sup = real_supervisor(short_tmp, {"publisher": "ok", "w1": "leak"})

    async def scenario() -> None:
        task = asyncio.create_task(sup.run())
        w1 = sup.children["w1"]
        await wait_for(lambda: w1.recycles >= 1, what="a recycle")
        await wait_for(lambda: w1.state is S.RUNNING, what="replacement RUNNING")
        sup.request_shutdown()
        assert await asyncio.wait_for(task, timeout=30) == 0

    asyncio.run(scenario())
    w1 = sup.children["w1"]
    assert w1.recycles == 1 and w1.total_restarts == 0
    assert len(list(short_tmp.glob("ready-w1-*"))) == 2, "one leaking process, one replacement"
    assert sup.children["publisher"].recycles == 0


def test_publisher_fatal_stops_the_collector_with_exit_1(short_tmp: Path) -> None:
    sup = real_supervisor(short_tmp, {"publisher": "config", "w1": "ok"})

    async def scenario() -> int:
        return await asyncio.wait_for(sup.run(), timeout=30)

    assert asyncio.run(scenario()) == 1
    assert sup.children["publisher"].state is S.FATAL
    assert sup.children["w1"].state is S.STOPPED


def test_second_instance_is_refused_by_the_lock(short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = real_supervisor(short_tmp, {"publisher": "ok"})
    assert first.acquire() is None
    try:
        second = real_supervisor(short_tmp, {"publisher": "ok"})
        assert asyncio.run(second.run()) == 2
        assert f"another collector with node id NODE_A is running (pid {os.getpid()})" in caplog.text
        assert second.children["publisher"].process is None, "nothing was spawned"
    finally:
        first.release()
    third = real_supervisor(short_tmp, {"publisher": "ok"})
    assert third.acquire() is None
    third.release()


def test_malformed_beats_do_not_break_status_or_metrics(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.running("publisher")
    rig.running()
    rig.beat(events_out="many", drops=None, last_message_at="yesterday", connection=5, stale="yes")
    rig.beat("publisher", streams=["not", "a", "dict"], redis="down", redis_down_since="soon",
             buffered="lots", buffer_limit=0, latency={"buckets": "x", "sum": "y"})
    c = rig.child()
    rig.sup.on_child_message(c, c.incarnation, {"t": "beat", "stats": "not a dict"})
    st = rig.sup.status()
    assert st["health"]["status"] in ("degraded", "unhealthy")
    assert st["children"]["binance"]["events_total"] == 0
    snap = rig.sup.metrics_snapshot()
    assert snap["children"]["publisher"]["totals"]["latency"]["count"] == 0
    from collector.metrics import make_registry, render

    body, _ = render(make_registry(rig.sup.metrics_snapshot))
    assert b'collector_child_state{name="binance",state="RUNNING"} 1.0' in body


def test_http_port_taken_fails_fast_with_exit_2(short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    import socket as socketlib

    taken = socketlib.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        settings = Settings(run_dir=short_tmp, http={"enabled": True, "port": taken.getsockname()[1]})
        sup = Supervisor(settings, specs=[ChildSpec("publisher", "publisher", dummy_child,
                                                    ("publisher", str(short_tmp), "ok"))])
        assert asyncio.run(sup.run()) == 2
    finally:
        taken.close()
    assert "HTTP: cannot listen on 127.0.0.1" in caplog.text
    assert sup.children["publisher"].process is None, "nothing spawned"
    assert not settings.control_socket.exists()
    assert sup.acquire() is None, "lock released"
    sup.release()
