"""Structured logs: one line per record, ``key=value`` fields an operator can grep at 3 a.m.

Records carry the fields the daemon's modules pass in ``extra`` (``instrument``, ``state``,
``link``, ``peer``, ``task``, ``error``, …). Under systemd (``$JOURNAL_STREAM`` set) the
timestamp is left to the journal and the level is given as a syslog ``<N>`` prefix, so
``journalctl -p warning`` filters by it.
"""
from __future__ import annotations

import logging
import os
import sys

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SYSLOG = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
           logging.CRITICAL: 2}


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


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
    handler._qnode = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
