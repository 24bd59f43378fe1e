"""Console scripts: ``collector`` (run, simulate, demo) and ``collectorctl`` (status, restart, stop,
start, logs).

``collectorctl`` finds the collector the same way the collector places itself: the same settings
(``--config``/``COLLECTOR_CONFIG``, ``COLLECTOR_RUN_DIR``, ``COLLECTOR_NODE_ID``) give the same
control socket path. Exit codes follow ``supervisorctl`` (LSB): 0 all listed children RUNNING,
3 some are not, 4 the collector is unreachable or a name is unknown; 2 a bad configuration.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, Sequence

from shared import __version__
from shared.settings import ConfigError, Settings, config_file_warnings, load_settings

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_NOT_RUNNING = 3
EXIT_UNREACHABLE = 4

_SAFE_NAME = re.compile(r"^[a-z0-9_-]{1,64}\Z")


# ---------------------------------------------------------------- collector

def _collector_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collector", description="Crypto-exchange collector.")
    parser.add_argument("--version", action="version", version=f"collector {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the collector (parent supervisor, publisher, workers)")
    _add_config_flags(run)
    run.add_argument("--redis-url", help="Redis URL (redis://[:password@]host:port/db)")
    run.add_argument("--http-port", type=int, help="HTTP port for /health /status /metrics")
    run.add_argument("--log-dir", help="directory of the per-process log files")
    run.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    sub.add_parser("simulate", help="run the local exchange simulator (see `collector simulate --help`)",
                   add_help=False)
    sub.add_parser("demo", help="offline demo: private Redis, simulator and collector (see `collector demo --help`)",
                   add_help=False)
    return parser


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (default: $COLLECTOR_CONFIG)")
    parser.add_argument("--node-id", help="node id (one collector per node id)")
    parser.add_argument("--run-dir", help="directory of the lock file and control socket")


def collector_main(argv: Sequence[str] | None = None) -> int:
    """``collector run|simulate|demo``; returns the process exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "simulate":
        from collector.simulator.server import cli_main  # lazily: the simulator is optional at run time

        return int(cli_main(args_list[1:]) or 0)
    if args_list and args_list[0] == "demo":
        from collector.demo import demo_main

        return demo_main(args_list[1:])
    args = _collector_parser().parse_args(args_list)
    settings = _load(args, redis={"url": args.redis_url}, http={"port": args.http_port},
                     log_dir=args.log_dir, log_level=args.log_level)
    if settings is None:
        return EXIT_CONFIG
    from workers.exchanges import IMPLEMENTED

    not_ready = sorted(set(settings.exchanges.enabled()) - IMPLEMENTED)
    if not_ready:
        print(f"config error: exchanges.{not_ready[0]}.enabled: no adapter for {not_ready[0]!r} yet "
              f"(implemented: {', '.join(sorted(IMPLEMENTED))})", file=sys.stderr)
        return EXIT_CONFIG
    if not settings.exchanges.enabled():
        print("config error: exchanges: no exchange is enabled", file=sys.stderr)
        return EXIT_CONFIG
    for warning in config_file_warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    from collector.supervisor import main as supervise

    return supervise(settings)


def _load(args: argparse.Namespace, **overrides: Any) -> Settings | None:
    """Settings from --config, env and flags; prints the one-line error and returns None if bad."""
    try:
        return load_settings(args.config, node_id=args.node_id, run_dir=args.run_dir, **overrides)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None


# ---------------------------------------------------------------- collectorctl

def _ctl_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collectorctl", description="Control a running collector.")
    parser.add_argument("--version", action="version", version=f"collectorctl {__version__}")
    _add_config_flags(parser)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="children, states and health (exit 0/3/4 like supervisorctl)")
    status.add_argument("--json", action="store_true", help="print the full status as JSON")
    status.add_argument("names", nargs="*", metavar="NAME", help="only these children")
    for cmd, text in (("restart", "stop gracefully and start fresh (also clears FATAL)"),
                      ("stop", "stop and do not restart"),
                      ("start", "start a STOPPED, FATAL or BACKOFF child now")):
        p = sub.add_parser(cmd, help=text)
        p.add_argument("name", metavar="NAME", help="publisher or an exchange name")
    logs = sub.add_parser("logs", help="print (and follow) a process's own log file")
    logs.add_argument("name", metavar="NAME", help="collector, publisher or an exchange name")
    logs.add_argument("-n", "--lines", type=int, default=20, help="lines to print first (default 20)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (follows rotation)")
    return parser


def collectorctl_main(argv: Sequence[str] | None = None) -> int:
    """``collectorctl``; returns the process exit code."""
    args = _ctl_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    settings = _load(args)
    if settings is None:
        return EXIT_CONFIG
    if args.command == "logs":
        return _cmd_logs(settings, args.name, args.lines, args.follow)
    from collector.control import Unreachable, request

    try:
        if args.command == "status":
            reply = request(settings, "status", timeout=args.timeout)
        else:
            reply = request(settings, args.command, {"name": args.name}, timeout=args.timeout)
    except Unreachable as exc:
        print(f"collectorctl: collector unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not reply.get("ok"):
        print(f"collectorctl: {reply.get('error', 'failed')}", file=sys.stderr)
        return EXIT_UNREACHABLE if "unknown name" in str(reply.get("error")) else EXIT_ERROR
    if args.command == "status":
        return _cmd_status(reply["status"], args.names, args.json)
    print(reply.get("message") or f"{args.name}: {reply.get('state')}")
    return EXIT_OK


def _cmd_status(status: dict[str, Any], names: list[str], as_json: bool) -> int:
    children: dict[str, dict[str, Any]] = status.get("children") or {}
    unknown = [n for n in names if n not in children]
    if unknown:
        print(f"collectorctl: unknown name {', '.join(map(repr, unknown))}; "
              f"valid names: {', '.join(children)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    selected = {n: children[n] for n in (names or children)}
    if as_json:
        out = dict(status)
        out["children"] = selected
        print(json.dumps(out, indent=2, sort_keys=False, default=str))
    else:
        print(format_status_table(selected))
        health = status.get("health") or {}
        line = f"health: {health.get('status', 'unknown')}"
        if health.get("reasons"):
            line += " - " + "; ".join(health["reasons"])
        print(line)
    all_running = all(c.get("state") == "RUNNING" for c in selected.values())
    return EXIT_OK if all_running else EXIT_NOT_RUNNING


COLUMNS = ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "RSS", "FDS", "EV/S", "DROPS",
           "LAST-EVENT", "CONN/CIRCUIT", "LAST-ERROR")
_ERROR_WIDTH = 70


def format_status_table(children: dict[str, dict[str, Any]]) -> str:
    """A ``supervisorctl status``-like table, one row per child."""
    rows = [list(COLUMNS)]
    for name, c in children.items():
        conn = c.get("connection") or "-"
        if c.get("circuit"):
            conn = f"{conn}/{c['circuit']}"
        if c.get("stale"):
            conn += " stale"
        error = c.get("last_error") or (c.get("last_exit") if c.get("state") != "RUNNING" else None) or "-"
        if c.get("state") == "BACKOFF" and c.get("next_start_in_s") is not None:
            error = f"{error}; retry in {c['next_start_in_s']:.0f}s"
        error = " ".join(str(error).split())
        if len(error) > _ERROR_WIDTH:
            error = error[: _ERROR_WIDTH - 3] + "..."
        rows.append([
            name,
            str(c.get("state", "?")),
            str(c["pid"]) if c.get("pid") else "-",
            _duration(c.get("uptime_s")),
            str(c.get("restarts", 0)),
            _bytes(c.get("rss_bytes")),
            str(c["fds"]) if c.get("fds") is not None else "-",
            f"{c['events_per_s']:.1f}" if c.get("events_per_s") is not None else "-",
            str(int(c.get("drops") or 0)),
            _age(c.get("last_event_age_s")),
            conn,
            error,
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = []
    for r in rows:
        cells = [r[i].ljust(widths[i]) for i in range(len(COLUMNS) - 1)] + [r[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    text = f"{hours}:{minutes:02d}:{s:02d}"
    return f"{days}d {text}" if days else text


def _bytes(n: Any) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"


def _age(seconds: Any) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _cmd_logs(settings: Settings, name: str, lines: int, follow: bool) -> int:
    """Read the process's own rotating log file directly (works while the collector is down)."""
    from collector.logs import follow as follow_file
    from collector.logs import tail_lines

    if not _SAFE_NAME.match(name):
        print(f"collectorctl: {name!r} is not a process name", file=sys.stderr)
        return EXIT_ERROR
    path = settings.log_file(name)
    if not path.exists() and not follow:
        print(f"collectorctl: no log file at {path}", file=sys.stderr)
        return EXIT_ERROR
    for line in tail_lines(path, max(0, lines)):
        print(line)
    sys.stdout.flush()
    if follow:
        try:
            follow_file(path, sys.stdout)
        except KeyboardInterrupt:
            pass
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(collector_main())
