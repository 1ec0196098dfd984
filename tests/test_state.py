"""The node's SQLite state: survives reopening, commits atomically, refuses foreign schemas."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from qnode.daemon.messages import Deduplicator
from qnode.daemon.state import StateError, StateStore


def test_state_survives_closing_and_reopening(tmp_path):
    db = tmp_path / "node" / "state.sqlite"
    with StateStore(db) as s:
        s.save_link("ab", {"expected_seq": 17, "pairs": [[3, "psi+"], [4, "psi-"]]})
        s.save_next_message_id(1234)
        d = Deduplicator(window=64)
        for i in (5, 9, 7, 70):
            d.check("bob", i)
        s.save_dedup(d.snapshot())
    with StateStore(db) as s:
        assert s.load_links() == {"ab": {"expected_seq": 17, "pairs": [[3, "psi+"], [4, "psi-"]]}}
        assert s.next_message_id() == 1234
        restored = Deduplicator(window=64)
        restored.restore(s.load_dedup())
        assert restored.check("bob", 70) == "duplicate" and restored.check("bob", 9) == "duplicate"
        assert restored.check("bob", 8) is None


def test_a_transaction_commits_all_or_nothing(tmp_path):
    with StateStore(tmp_path / "s.sqlite") as s:
        s.save_link("ab", {"expected_seq": 1})
        with pytest.raises(RuntimeError):
            with s.transaction():
                s.save_link("ab", {"expected_seq": 2})
                s.save_next_message_id(10)
                raise RuntimeError("crash between the two updates")
        assert s.load_links()["ab"] == {"expected_seq": 1}
        assert s.next_message_id() == 0
        with s.transaction():
            s.save_link("ab", {"expected_seq": 2})
            s.save_next_message_id(10)
        assert (s.load_links()["ab"], s.next_message_id()) == ({"expected_seq": 2}, 10)


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
        from qnode.daemon.state import StateStore
        s = StateStore({str(db)!r})
        s.save_link("ab", {{"expected_seq": 99}})
        s.save_next_message_id(7)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], timeout=30)
    assert proc.returncode == -9
    with StateStore(db) as s:
        assert s.load_links() == {"ab": {"expected_seq": 99}} and s.next_message_id() == 7
