"""``python -m collector.simulator --port 0``: run the local exchange simulator."""

from collector.simulator.server import cli_main

if __name__ == "__main__":
    raise SystemExit(cli_main())
