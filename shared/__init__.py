"""Code shared by every process: settings, the event model, IPC framing, symbol rules."""

__version__ = "0.1.0"
