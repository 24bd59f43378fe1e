"""Names that travel: process states, health values, circuit states.

The same words appear in code, ``collectorctl status``, ``/status``, metrics labels, the
heartbeat and the README.
"""

from __future__ import annotations

from enum import Enum


class ProcessState(str, Enum):
    STOPPED = "STOPPED"      # not running, on purpose (before start, after stop)
    STARTING = "STARTING"    # spawned, no readiness signal yet
    RUNNING = "RUNNING"      # readiness signal received
    BACKOFF = "BACKOFF"      # exited unexpectedly, waiting to restart
    STOPPING = "STOPPING"    # asked to stop, waiting for exit (SIGKILL after a deadline)
    RECYCLING = "RECYCLING"  # over a resource limit, being stopped to be replaced (not a crash)
    FATAL = "FATAL"          # too many restarts in the window; only `collectorctl restart` revives

    def __str__(self) -> str:
        return self.value




class Health(str, Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


class CircuitState(str, Enum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"

    def __str__(self) -> str:
        return self.value


#: exit codes of child processes (a protocol between children and the supervisor)
EXIT_OK = 0
EXIT_CRASH = 1
EXIT_CONFIG = 3      # bad configuration in the child: FATAL at once, no restart loop
EXIT_PARENT_GONE = 4  # the parent died; nothing to restart
