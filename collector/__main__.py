"""``python -m collector ...`` is the ``collector`` console script."""

import sys

from collector.cli import collector_main

if __name__ == "__main__":
    sys.exit(collector_main())
