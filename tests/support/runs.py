"""What every test of a running demo network checks at its end: the run raised nothing inside
its ``try`` and every daemon exited 0; on failure, the tail of every log says why."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def log_tails(log_dir: Path, chars: int = 3000) -> str:
    """The last ``chars`` characters of every ``*.log`` in ``log_dir``, each under its name."""
    return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}"
                     for p in sorted(log_dir.glob("*.log")))


def assert_ran_clean(net: Any, failure: object, log_dir: Path, chars: int = 3000) -> None:
    """``failure`` (what the run's ``try`` caught) is None and every daemon of ``net`` (a
    :class:`~qnode.daemon.tools.demo.DemoNetwork`) exited 0; else AssertionError with the
    logs' tails."""
    if failure is not None:
        raise AssertionError(f"{failure}\n{log_tails(log_dir, chars)}")
    if not all(c == 0 for c in net.exit_codes.values()):
        raise AssertionError(f"{net.exit_codes}\n{log_tails(log_dir, chars)}")
