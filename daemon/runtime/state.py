"""What a node must remember across restarts, in SQLite (stdlib ``sqlite3``;
docs/integrators/link-layer.md, section Persistence).

* each link end's state (pair inventory, sequence numbers, unacknowledged EXPIREs) as the link
  layer's JSON snapshot: its scalars in ``links``, its runs of pairs one row each in
  ``link_runs``, so that a change (:meth:`StateStore.save_link_delta`) writes only the runs that
  changed — O(batch), not O(inventory);
* the node's next message id, so ids keep increasing after a restart (peers de-duplicate by id);
* the de-duplication window of every sender, so a redelivery that arrives after a restart is
  still recognised.

The database runs in WAL mode with ``synchronous=FULL``: a committed sequence number survives a
power cut. :meth:`StateStore.transaction` makes several updates atomic (e.g. accept a herald
and advance the message id together).

The files are the node user's alone whatever the umask: the database is created 0600 (SQLite
gives its ``-wal`` and ``-shm`` the database's mode), a looser existing one is tightened with a
warning, and a state directory qnode creates is 0700.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("qnode.state")

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS links (
    link TEXT PRIMARY KEY, snapshot TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS link_runs (
    link TEXT NOT NULL, first_seq INTEGER NOT NULL, run TEXT NOT NULL,
    PRIMARY KEY (link, first_seq));
CREATE TABLE IF NOT EXISTS dedup (
    sender TEXT PRIMARY KEY, highest INTEGER NOT NULL, seen BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS app_requests (
    application TEXT NOT NULL, request_id TEXT NOT NULL, pairs INTEGER NOT NULL,
    delivered INTEGER NOT NULL, PRIMARY KEY (application, request_id));
"""


class StateError(RuntimeError):
    """The state database cannot be used (wrong schema, unreadable, corrupt); names the file."""


def _private_file(path: Path) -> None:
    """Make ``path`` exist with mode 0600 before SQLite opens it: created so (O_EXCL, then an
    fchmod, which the umask does not touch), or an existing file and its ``-wal``/``-shm``
    tightened to it, with a warning naming the mode found."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        return
    for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(os.stat(f).st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            try:
                os.chmod(f, 0o600)
            except OSError as exc:  # another user's file: SQLite says if it cannot be used
                log.warning("state file is accessible by group or others and cannot be made "
                            "0600", extra={"file": str(f), "mode": f"{mode:04o}",
                                           "error": exc.strerror or str(exc)})
                continue
            log.warning("state file was accessible by group or others; made it 0600",
                        extra={"file": str(f), "mode": f"{mode:04o}"})


class StateStore:
    """A node's SQLite state at ``path`` (created with its directory if missing).

    Thread-safe: one connection, one lock. Open once per daemon; close on shutdown.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._depth = 0
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _private_file(self.path)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._check_schema()
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"{self.path}: cannot use the state database: {exc}") from exc

    def _check_schema(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif row[0] != str(SCHEMA_VERSION):
            raise StateError(f"{self.path}: state schema {row[0]}, this qnode reads "
                             f"{SCHEMA_VERSION}; move the file aside to start afresh")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside commits together or not at all (nesting joins the outer one)."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._db.execute("COMMIT")

    # -- link ends
    def save_link(self, link: str, snapshot: Mapping[str, Any]) -> None:
        """Store one link end's full snapshot (JSON-able). A snapshot with ``runs`` (the link
        layer's) keeps them one row each."""
        scalars = {k: v for k, v in snapshot.items() if k != "runs"}
        with self.transaction():
            if "runs" in snapshot:
                self._db.execute("DELETE FROM link_runs WHERE link=?", (link,))
                self._put_runs(link, snapshot["runs"])
                scalars["runs_in_table"] = True
            self._put_scalars(link, scalars)

    def save_link_delta(self, link: str, delta: Mapping[str, Any]) -> None:
        """Apply a link end's ``snapshot_delta()`` (runs deleted, runs upserted, scalars) in one
        transaction, after a full :meth:`save_link` of the same end."""
        scalars = {k: v for k, v in delta.items()
                   if k not in ("delta", "base", "runs_upsert", "runs_delete")}
        scalars["runs_in_table"] = True
        with self.transaction():
            self._db.executemany("DELETE FROM link_runs WHERE link=? AND first_seq=?",
                                 [(link, int(s)) for s in delta["runs_delete"]])
            self._put_runs(link, delta["runs_upsert"])
            self._put_scalars(link, scalars)

    def _put_runs(self, link: str, runs: Any) -> None:
        self._db.executemany(
            "INSERT INTO link_runs VALUES (?, ?, ?) ON CONFLICT(link, first_seq) DO UPDATE "
            "SET run=excluded.run",
            [(link, int(r["first_seq"]), json.dumps(r, allow_nan=False)) for r in runs])

    def _put_scalars(self, link: str, scalars: Mapping[str, Any]) -> None:
        text = json.dumps(scalars, sort_keys=True, allow_nan=False)
        self._db.execute("INSERT INTO links VALUES (?, ?, ?) ON CONFLICT(link) DO UPDATE "
                         "SET snapshot=excluded.snapshot, updated=excluded.updated",
                         (link, text, time.time()))

    def load_links(self) -> dict[str, dict[str, Any]]:
        """Every stored link end's snapshot, runs reassembled oldest first."""
        from qnode.daemon.linklayer import seq_diff

        with self._lock:
            rows = self._db.execute("SELECT link, snapshot FROM links ORDER BY link").fetchall()
            run_rows = self._db.execute("SELECT link, run FROM link_runs").fetchall()
        runs: dict[str, list[dict[str, Any]]] = {}
        for link, text in run_rows:
            try:
                runs.setdefault(link, []).append(json.loads(text))
            except json.JSONDecodeError as exc:
                raise StateError(f"{self.path}: link {link!r}: corrupt run: {exc}") from exc
        out = {}
        for link, text in rows:
            try:
                snap = json.loads(text)
            except json.JSONDecodeError as exc:
                raise StateError(f"{self.path}: link {link!r}: corrupt snapshot: {exc}") from exc
            if snap.pop("runs_in_table", False):
                def oldest_first(run: dict[str, Any], e: int = snap["expected_seq"]) -> int:
                    return -seq_diff(e, run["first_seq"])

                snap["runs"] = sorted(runs.get(link, []), key=oldest_first)
            out[link] = snap
        return out

    def forget_link(self, link: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM links WHERE link=?", (link,))
            self._db.execute("DELETE FROM link_runs WHERE link=?", (link,))

    # -- own message ids
    def next_message_id(self) -> int:
        """The id the node's next message gets. A new store starts at the wall clock in µs: a
        node whose state was lost (a wiped station) then still sends ids above the ones its
        peers' replay windows remember, as long as it sent fewer than one message per µs on
        average before (and the clock did not go back)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='next_id'").fetchone()
        return int(row[0]) if row else time.time_ns() // 1000

    def save_next_message_id(self, next_id: int) -> None:
        """Store the end of the node's id lease; ValueError if it is below the stored one."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='next_id'").fetchone()
        if row is not None and next_id < int(row[0]):
            raise ValueError(f"message ids must not go back: {next_id} < {int(row[0])}")
        with self.transaction():
            self._db.execute("INSERT INTO meta VALUES ('next_id', ?) ON CONFLICT(key) DO UPDATE "
                             "SET value=excluded.value", (str(next_id),))

    # -- the application service's live requests (qnode.daemon.apps.service)
    def apply_app_requests(self, changes: list[tuple[str, str, int, int] | tuple[str, str]]
                           ) -> None:
        """Apply, in order, ``(application, request_id, pairs, delivered)`` (a live request,
        inserted or updated) and ``(application, request_id)`` (it ended: removed)."""
        with self.transaction():
            for c in changes:
                if len(c) == 4:
                    self._db.execute(
                        "INSERT INTO app_requests VALUES (?, ?, ?, ?) ON CONFLICT(application, "
                        "request_id) DO UPDATE SET delivered=excluded.delivered", c)
                else:
                    self._db.execute("DELETE FROM app_requests WHERE application=? AND "
                                     "request_id=?", c)

    def load_app_requests(self) -> list[tuple[str, str, int, int]]:
        """The live requests stored: (application, request_id, pairs, delivered)."""
        with self._lock:
            rows = self._db.execute("SELECT application, request_id, pairs, delivered FROM "
                                    "app_requests ORDER BY application, request_id").fetchall()
        return [(str(a), str(r), int(p), int(d)) for a, r, p, d in rows]

    # -- de-duplication windows (see qnode.daemon.bus.envelope.Deduplicator)
    def save_dedup(self, snapshot: Mapping[str, tuple[int, int]]) -> None:
        with self.transaction():
            for sender, (highest, seen) in snapshot.items():
                blob = seen.to_bytes((seen.bit_length() + 7) // 8 or 1, "little")
                self._db.execute("INSERT INTO dedup VALUES (?, ?, ?) ON CONFLICT(sender) DO "
                                 "UPDATE SET highest=excluded.highest, seen=excluded.seen",
                                 (sender, highest, blob))

    def load_dedup(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            rows = self._db.execute("SELECT sender, highest, seen FROM dedup").fetchall()
        return {s: (int(h), int.from_bytes(b, "little")) for s, h, b in rows}
