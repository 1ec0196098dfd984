"""The node's SQLite state: survives reopening, commits atomically, refuses foreign schemas."""
from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from qnode.daemon.bus.envelope import Deduplicator
from qnode.daemon.runtime.state import StateError, StateStore


def test_state_survives_closing_and_reopening(tmp_path):
    db = tmp_path / "node" / "state.sqlite"
    with StateStore(db) as s:
        s.save_link("ab", {"expected_seq": 17, "pairs": [[3, "psi+"], [4, "psi-"]]})
        s.save_next_message_id(1234)
        d = Deduplicator(window=64)
        for i in (5, 9, 7, 70):
            d.check("alice-bob|bob", i)
        s.save_dedup(d.snapshot())
    with StateStore(db) as s:
        assert s.load_links() == {"ab": {"expected_seq": 17, "pairs": [[3, "psi+"], [4, "psi-"]]}}
        assert s.next_message_id() == 1234
        restored = Deduplicator(window=64)
        assert restored.restore(s.load_dedup()) == 0
        assert restored.check("alice-bob|bob", 70) == "duplicate"
        assert restored.check("alice-bob|bob", 9) == "duplicate"
        assert restored.check("alice-bob|bob", 8) is None


def test_a_transaction_commits_all_or_nothing(tmp_path):
    with StateStore(tmp_path / "s.sqlite") as s:
        s.save_link("ab", {"expected_seq": 1})
        with pytest.raises(RuntimeError):
            with s.transaction():
                s.save_link("ab", {"expected_seq": 2})
                s.save_next_message_id(s.next_message_id() + 10)
                raise RuntimeError("crash between the two updates")
        assert s.load_links()["ab"] == {"expected_seq": 1}
        start = s.next_message_id()
        with s.transaction():
            s.save_link("ab", {"expected_seq": 2})
            s.save_next_message_id(start + 10)
        assert (s.load_links()["ab"], s.next_message_id()) == ({"expected_seq": 2}, start + 10)


def test_message_ids_never_go_back(tmp_path):
    with StateStore(tmp_path / "s.sqlite") as s:
        s.save_next_message_id(50)
        with pytest.raises(ValueError, match="must not go back"):
            s.save_next_message_id(49)


def test_a_foreign_schema_is_refused_naming_the_file(tmp_path):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
                      "INSERT INTO meta VALUES ('schema', '0');")
    con.close()
    with pytest.raises(StateError, match=r"old.sqlite: state schema 0"):
        StateStore(db)


def test_a_committed_state_survives_a_killed_process(tmp_path):
    """Commit, then die without closing (SIGKILL): the next process reads what was committed."""
    db = tmp_path / "s.sqlite"
    code = textwrap.dedent(f"""
        import os, signal
        from qnode.daemon.runtime.state import StateStore
        s = StateStore({str(db)!r})
        s.save_link("ab", {{"expected_seq": 99}})
        s.save_next_message_id(7)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], timeout=30)
    assert proc.returncode == -9
    with StateStore(db) as s:
        assert s.load_links() == {"ab": {"expected_seq": 99}} and s.next_message_id() == 7


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_state_files_are_the_node_users_alone_from_creation(tmp_path, umask_022):
    db = tmp_path / "state" / "alice" / "qnode.sqlite"
    with StateStore(db) as s:
        s.save_next_message_id(5)   # WAL: the -wal and -shm exist while it is open
        modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in db.parent.iterdir()}
    assert modes == {"qnode.sqlite": 0o600, "qnode.sqlite-wal": 0o600, "qnode.sqlite-shm": 0o600}
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700   # the directory qnode made


def test_a_loose_existing_state_file_is_tightened_with_a_warning(tmp_path, umask_022, caplog):
    db = tmp_path / "s.sqlite"
    with StateStore(db) as s:
        s.save_next_message_id(5)
    db.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="qnode.state")
    with StateStore(db) as s:
        assert s.next_message_id() == 5
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    [rec] = [r for r in caplog.records if r.name == "qnode.state"]
    assert rec.file == str(db) and rec.mode == "0644" and "made it 0600" in rec.getMessage()
    caplog.clear()
    with StateStore(db):   # already private: nothing to say
        pass
    assert not [r for r in caplog.records if r.name == "qnode.state"]


def test_a_new_store_starts_its_message_ids_at_the_wall_clock(tmp_path):
    """A node that lost its state must not send ids its peers' replay windows already hold:
    a new store starts at the wall clock in µs, above the ids of any earlier life that sent
    less than one message per µs."""
    with StateStore(tmp_path / "old.sqlite") as old:
        first = old.next_message_id()
        old.save_next_message_id(first + 1_000_000)   # a long life: a million messages
    time.sleep(1.1)                                    # ... sent over more than a second
    with StateStore(tmp_path / "wiped.sqlite") as new:
        assert new.next_message_id() > first + 1_000_000
