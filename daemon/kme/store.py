"""The node's store of secret keys shared with its peers, each key handed out once.

Post-processing leaves the same keys (same key_ID, same bytes) in the stores of both ends of a
link. Each key names its **master node**: the node whose KME hands it to a master SAE through
``enc_keys``; the KME of the other end hands the same key to the slave SAE through ``dec_keys``
when asked for it by id. A key leaves the store when it is handed out; its id is remembered (a
bounded table of the last ``max_delivered_ids``) so a second request for it is answered
"already delivered" rather than "unknown".

Guarantees:

* every take is atomic: all the keys asked for, or none (nothing is taken when the request
  fails);
* one SQLite file per node (WAL, ``synchronous=FULL``: a key handed out is gone after a crash),
  created with mode 0600, as are its ``-wal`` and ``-shm`` files;
* deleted key material does not linger: ``secure_delete`` zeroes freed cells, and after every
  take a truncating checkpoint empties the write-ahead log, which would still hold the pages the
  key was added with;
* key material never appears in a repr, an exception, a log line or a counter: only key ids do.

Keys have one size per store (``key_size_bits``). The store is synchronous and thread-safe (one
connection behind a lock), so a server may call it through :func:`asyncio.to_thread`.
"""
from __future__ import annotations

import collections
import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    link TEXT NOT NULL,
    peer TEXT NOT NULL,
    master_node TEXT NOT NULL,
    material BLOB NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_by_pair ON keys (master_node, peer);
CREATE INDEX IF NOT EXISTS keys_by_link ON keys (link);
CREATE TABLE IF NOT EXISTS delivered (
    seq INTEGER PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    side TEXT NOT NULL,
    sae TEXT NOT NULL,
    other_sae TEXT NOT NULL,
    peer TEXT NOT NULL,
    at INTEGER NOT NULL
);
"""


class Key(NamedTuple):
    """One key: its id and its bytes. A plain tuple whose repr leaves the bytes out."""

    key_id: uuid.UUID
    material: bytes

    def __repr__(self) -> str:
        return f"Key(key_id={self.key_id}, material=<{len(self.material)} bytes>)"


class KeyStoreError(Exception):
    """A take the store refused; nothing was taken. ``reason`` names the class of refusal."""

    reason = "refused"


class KeysExhausted(KeyStoreError):
    """Fewer keys are stored than were asked for."""

    reason = "keys_exhausted"

    def __init__(self, requested: int, available: int):
        super().__init__(f"{requested} keys requested, {available} available")
        self.requested, self.available = requested, available


class _KeyIdError(KeyStoreError):
    message = ""

    def __init__(self, key_id: uuid.UUID):
        super().__init__(f"key {key_id}: {self.message}")
        self.key_id = key_id


class UnknownKey(_KeyIdError):
    """The id names no key this store holds or handed out."""

    reason = "unknown_key"
    message = "unknown"


class AlreadyDelivered(_KeyIdError):
    """The key was handed out already (to whichever SAE)."""

    reason = "already_delivered"
    message = "already delivered"


class KeyNotForCaller(_KeyIdError):
    """The key exists but is not served through this request: another link, or a key whose
    master is this node (served through ``enc_keys``, not ``dec_keys``)."""

    reason = "not_for_caller"
    message = "not available to this SAE pair"


def _open_private(path: Path) -> sqlite3.Connection:
    """The SQLite connection of ``path``, the file (and its WAL and SHM) created mode 0600."""
    old = os.umask(0o077)
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA secure_delete=ON")
        db.executescript(_SCHEMA)  # the first write: creates the -wal and -shm files
    finally:
        os.umask(old)
    # the umask covers files we create; an existing file may have been made by someone else
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)
    return db


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")
    return value


class KeyStore:
    """The keys this node (``node_id``) shares with its peers, in the SQLite file ``path``.

    ``key_size_bits`` is the size of every key (a multiple of 8), ``max_key_count`` the most
    keys stored per link (beyond it new keys are dropped and counted), ``max_delivered_ids``
    how many ids of handed-out keys are remembered. Counters (since this object was made):
    ``added_total``, ``delivered_total``, ``dropped_total`` and ``refused_total[reason]``.
    """

    def __init__(self, path: str | os.PathLike[str], node_id: str, *,
                 key_size_bits: int = 256, max_key_count: int = 10_000,
                 max_delivered_ids: int = 100_000):
        _check_name("node_id", node_id)
        if key_size_bits <= 0 or key_size_bits % 8:
            raise ValueError(f"key_size_bits must be a positive multiple of 8, "
                             f"not {key_size_bits}")
        if max_key_count < 1 or max_delivered_ids < 1:
            raise ValueError("max_key_count and max_delivered_ids must be at least 1")
        self.path = Path(path)
        self.node_id = node_id
        self.key_size_bits = key_size_bits
        self.max_key_count = max_key_count
        self.max_delivered_ids = max_delivered_ids
        self.added_total = 0
        self.delivered_total = 0
        self.dropped_total = 0
        self.refused_total: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._db = _open_private(self.path)
        try:
            self._check_meta()
        except BaseException:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return (f"KeyStore(path={str(self.path)!r}, node_id={self.node_id!r}, "
                f"key_size_bits={self.key_size_bits})")

    @property
    def key_size_bytes(self) -> int:
        """The size of every key in bytes."""
        return self.key_size_bits // 8

    def _check_meta(self) -> None:
        with self._transaction() as db:
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
            if meta.get("node_id", self.node_id) != self.node_id:
                raise ValueError(f"{self.path} is the key store of node {meta['node_id']!r}, "
                                 f"not of {self.node_id!r}")
            size = int(meta.get("key_size_bits", self.key_size_bits))
            if size != self.key_size_bits and db.execute("SELECT 1 FROM keys").fetchone():
                raise ValueError(f"{self.path} holds keys of {size} bits, not "
                                 f"{self.key_size_bits}")
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           [("node_id", self.node_id),
                            ("key_size_bits", str(self.key_size_bits))])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _scrub_log(self) -> None:
        # the WAL still holds the pages as they were when the keys were added
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Checkpoint and close the database."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- adding ----------------------------------------------------------------------------

    def add(self, link: str, peer: str, master_node: str,
            keys: Sequence[tuple[uuid.UUID, bytes]]) -> int:
        """Store ``keys`` of ``link`` (shared with node ``peer``) whose master is
        ``master_node`` (this node or ``peer``); return how many were stored.

        Keys beyond ``max_key_count`` stored keys on the link are dropped (counted in
        ``dropped_total``). A key of the wrong length, or an id already stored, handed out or
        repeated in ``keys``, raises :class:`ValueError` and nothing is stored.
        """
        _check_name("link", link)
        _check_name("peer", peer)
        if peer == self.node_id:
            raise ValueError(f"peer {peer!r} is this node")
        if master_node not in (self.node_id, peer):
            raise ValueError(f"master_node must be {self.node_id!r} or {peer!r}, "
                             f"not {master_node!r}")
        rows = self._rows(link, peer, master_node, keys)
        try:
            with self._transaction() as db:
                for row in rows:
                    if db.execute("SELECT 1 FROM keys WHERE key_id = ? UNION ALL "
                                  "SELECT 1 FROM delivered WHERE key_id = ?",
                                  (row[0], row[0])).fetchone():
                        raise ValueError(f"key {row[0]}: already in the store or handed out")
                stored, = db.execute("SELECT COUNT(*) FROM keys WHERE link = ?",
                                     (link,)).fetchone()
                kept = rows[:max(0, self.max_key_count - stored)]
                db.executemany("INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?)", kept)
        except ValueError:
            self.refused_total["duplicate"] += 1
            raise
        self.added_total += len(kept)
        self.dropped_total += len(rows) - len(kept)
        return len(kept)

    def _rows(self, link: str, peer: str, master_node: str,
              keys: Sequence[tuple[uuid.UUID, bytes]]) -> list[tuple[str, str, str, str,
                                                                     bytes, int]]:
        now = int(time.time())
        seen: set[uuid.UUID] = set()
        rows = []
        for key_id, material in keys:
            if not isinstance(key_id, uuid.UUID):
                raise ValueError(f"a key id must be a uuid.UUID, not {type(key_id).__name__}")
            if len(material) != self.key_size_bytes:
                self.refused_total["wrong_length"] += 1
                raise ValueError(f"key {key_id}: {len(material)} bytes, the store's keys "
                                 f"have {self.key_size_bytes}")
            if key_id in seen:
                self.refused_total["duplicate"] += 1
                raise ValueError(f"key {key_id}: twice in one batch")
            seen.add(key_id)
            rows.append((str(key_id), link, peer, master_node, bytes(material), now))
        return rows

    # -- taking ----------------------------------------------------------------------------

    def take_for_enc(self, peer: str, number: int, *, master_sae: str,
                     slave_sae: str) -> list[Key]:
        """Remove and return the ``number`` oldest keys shared with ``peer`` whose master is
        this node, for ``master_sae`` (hosted here) and ``slave_sae`` (hosted at ``peer``).

        Raises :class:`KeysExhausted`, taking none, when fewer are stored.
        """
        if number < 1:
            raise ValueError(f"number must be at least 1, not {number}")
        try:
            with self._transaction() as db:
                rows = db.execute(
                    "SELECT rowid, key_id, material FROM keys WHERE master_node = ? AND "
                    "peer = ? ORDER BY rowid LIMIT ?", (self.node_id, peer, number)).fetchall()
                if len(rows) < number:
                    raise KeysExhausted(number, len(rows))
                db.executemany("DELETE FROM keys WHERE rowid = ?", [(r[0],) for r in rows])
                self._record(db, [r[1] for r in rows], "enc", master_sae, slave_sae, peer)
        except KeyStoreError as e:
            self.refused_total[e.reason] += 1
            raise
        self._scrub_log()
        self.delivered_total += len(rows)
        return [Key(uuid.UUID(key_id), bytes(material)) for _, key_id, material in rows]

    def take_by_ids(self, peer: str, ids: Sequence[uuid.UUID], *, sae: str,
                    master_sae: str) -> list[Key]:
        """Remove and return the keys ``ids`` (in that order), shared with ``peer`` and whose
        master is ``peer``, for the slave ``sae`` (hosted here) of ``master_sae``.

        Raises, taking none, :class:`UnknownKey`, :class:`AlreadyDelivered` or
        :class:`KeyNotForCaller` for the first id that cannot be served, and
        :class:`ValueError` for an empty list or a repeated id.
        """
        if not ids:
            raise ValueError("no key ids")
        if len(set(ids)) != len(ids):
            raise ValueError("a key id is repeated")
        try:
            with self._transaction() as db:
                rows = [self._row_for(db, peer, key_id) for key_id in ids]
                db.executemany("DELETE FROM keys WHERE rowid = ?", [(r[0],) for r in rows])
                self._record(db, [str(i) for i in ids], "dec", sae, master_sae, peer)
        except KeyStoreError as e:
            self.refused_total[e.reason] += 1
            raise
        self._scrub_log()
        self.delivered_total += len(rows)
        return [Key(key_id, bytes(row[1])) for key_id, row in zip(ids, rows, strict=True)]

    @staticmethod
    def _row_for(db: sqlite3.Connection, peer: str, key_id: uuid.UUID) -> tuple[int, bytes]:
        row = db.execute("SELECT rowid, material, peer, master_node FROM keys "
                         "WHERE key_id = ?", (str(key_id),)).fetchone()
        if row is None:
            if db.execute("SELECT 1 FROM delivered WHERE key_id = ?",
                          (str(key_id),)).fetchone():
                raise AlreadyDelivered(key_id)
            raise UnknownKey(key_id)
        if row[2] != peer or row[3] != peer:
            raise KeyNotForCaller(key_id)
        return row[0], row[1]

    def _record(self, db: sqlite3.Connection, key_ids: list[str], side: str, sae: str,
                other_sae: str, peer: str) -> None:
        now = int(time.time())
        db.executemany("INSERT INTO delivered (key_id, side, sae, other_sae, peer, at) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       [(k, side, sae, other_sae, peer, now) for k in key_ids])
        db.execute("DELETE FROM delivered WHERE seq <= (SELECT MAX(seq) FROM delivered) - ?",
                   (self.max_delivered_ids,))

    # -- counting --------------------------------------------------------------------------

    def count(self, peer: str, master_node: str) -> int:
        """How many keys shared with ``peer`` and mastered by ``master_node`` are stored."""
        with self._lock:
            n, = self._db.execute("SELECT COUNT(*) FROM keys WHERE peer = ? AND "
                                  "master_node = ?", (peer, master_node)).fetchone()
        return int(n)

    def count_link(self, link: str) -> int:
        """How many keys of ``link`` are stored (bounded by ``max_key_count``)."""
        with self._lock:
            n, = self._db.execute("SELECT COUNT(*) FROM keys WHERE link = ?",
                                  (link,)).fetchone()
        return int(n)

    def delivered_count(self) -> int:
        """How many ids of handed-out keys are remembered (at most ``max_delivered_ids``)."""
        with self._lock:
            n, = self._db.execute("SELECT COUNT(*) FROM delivered").fetchone()
        return int(n)

    def counters(self) -> dict[str, int]:
        """The counters as one flat mapping for metrics (``refused_total_<reason>``)."""
        out = {"added_total": self.added_total, "delivered_total": self.delivered_total,
               "dropped_total": self.dropped_total}
        out.update({f"refused_total_{reason}": n for reason, n in self.refused_total.items()})
        return out
