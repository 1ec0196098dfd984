"""Structured logs: one line per record, ``key=value`` fields an operator can grep at 3 a.m.

Records carry the fields the daemon's modules pass in ``extra`` (``instrument``, ``state``,
``link``, ``peer``, ``task``, ``error``, …). Under systemd (``$JOURNAL_STREAM`` set) the
timestamp is left to the journal and the level is given as a syslog ``<N>`` prefix, so
``journalctl -p warning`` filters by it.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SYSLOG = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
           logging.CRITICAL: 2}


def _escape(c: str) -> str:
    if c == "\n":
        return "\\n"
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def _quote(value: object) -> str:
    """``value`` as one token of a log line. Control characters (from a peer's message, say)
    are escaped, so input can never start a line of its own or drive a terminal."""
    text = str(value)
    if not text or any(c in ' "=\\' or not c.isprintable() for c in text):
        body = "".join(c if c.isprintable() and c not in '"\\' else
                       ("\\" + c if c in '"\\' else _escape(c)) for c in text)
        return f'"{body}"'
    return text


class RateLimitedLog:
    """Logs the first event per key, then at most one per ``interval_s`` with a count of the
    ones it held back, so a flood of bad input does not drown the log (or fill the disk)."""

    def __init__(self, logger: logging.Logger, interval_s: float = 1.0):
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def __call__(self, key: str, level: int, msg: str, *args: Any, exc_info: Any = False,
                 **extra: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self.interval_s:
            self._held[key] += 1
            return
        if len(self._last) > 10_000:  # keys come from input: keep the table bounded
            self._last.clear()
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            msg += " (%d more like it not logged)"
            args = (*args, held)
        self.logger.log(level, msg, *args, exc_info=exc_info, extra=extra)


class KeyValueFormatter(logging.Formatter):
    """``2026-11-23T10:00:00.123 WARNING qnode.bus msg="…" topic=… reason=…``."""

    def __init__(self, journal: bool = False):
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        fields = [f"{record.levelname}", record.name, f"msg={_quote(record.getMessage())}"]
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                fields.append(f"{key}={_quote(value)}")
        if record.exc_info:
            fields.append(f"exc={_quote(self.formatException(record.exc_info))}")
        line = " ".join(fields)
        if self.journal:
            return f"<{_SYSLOG.get(record.levelno, 6)}>{line}"
        ts = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        return f"{ts}.{int(record.msecs):03d} {line}"


def setup_logging(level: str = "INFO", *, stream=None) -> None:
    """Route every ``qnode.*`` logger to stderr as key=value lines (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter(journal="JOURNAL_STREAM" in os.environ))
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_qnode", False):
            root.removeHandler(h)
    handler._qnode = True  # type: ignore[attr-defined]  # noqa: SLF001
    root.addHandler(handler)
    root.setLevel(level.upper())
