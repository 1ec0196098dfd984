"""The KME's key store on a real SQLite file: atomic takes, the per-link bound, each key handed
out once, private files, and no key material where it should not be."""
from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest

from qnode.daemon.kme.store import (
    AlreadyDelivered,
    KeyNotForCaller,
    KeysExhausted,
    KeyStore,
    UnknownKey,
)

SAES = {"master_sae": "sae-alice-1", "slave_sae": "sae-bob-1"}


def keys(n: int, size: int = 32, fill: int | None = None) -> list[tuple[uuid.UUID, bytes]]:
    """``n`` keys with random ids; bytes ``fill`` repeated (a pattern easy to find in a file),
    or distinct per key."""
    return [(uuid.uuid4(), bytes([fill if fill is not None else (i % 251) + 1]) * size)
            for i in range(n)]


@pytest.fixture
def store(tmp_path: Path):
    s = KeyStore(tmp_path / "keys.sqlite", "alice", max_key_count=10, max_delivered_ids=5)
    yield s
    s.close()


def test_enc_takes_the_oldest_keys_of_the_pair_and_removes_them(store):
    mine, theirs = keys(4), keys(3)
    assert store.add("a-b", "bob", "alice", mine) == 4
    assert store.add("a-b", "bob", "bob", theirs) == 3
    assert store.count("bob", "alice") == 4 and store.count("bob", "bob") == 3
    taken = store.take_for_enc("bob", 3, **SAES)
    assert taken == mine[:3]
    assert store.count("bob", "alice") == 1 and store.count("bob", "bob") == 3
    assert store.added_total == 7 and store.delivered_total == 3


def test_exhausted_takes_nothing(store):
    batch = keys(2)
    store.add("a-b", "bob", "alice", batch)
    with pytest.raises(KeysExhausted) as e:
        store.take_for_enc("bob", 3, **SAES)
    assert (e.value.requested, e.value.available) == (3, 2)
    assert store.count("bob", "alice") == 2 and store.delivered_total == 0
    assert store.refused_total["keys_exhausted"] == 1
    assert store.take_for_enc("bob", 2, **SAES) == batch


def test_a_key_is_handed_out_once(store):
    batch = keys(2)
    store.add("a-b", "bob", "bob", batch)  # mastered by bob: served here through dec_keys
    ids = [k for k, _ in batch]
    assert store.take_by_ids("bob", ids[:1], sae="sae-alice-1", master_sae="sae-bob-1") \
        == batch[:1]
    with pytest.raises(AlreadyDelivered) as e:
        store.take_by_ids("bob", ids, sae="sae-alice-1", master_sae="sae-bob-1")
    assert "already delivered" in str(e.value) and e.value.key_id == ids[0]
    assert store.count("bob", "bob") == 1  # the second id was not taken with the refusal
    # the master side as well: a key handed out through enc_keys is gone for dec_keys
    mine = keys(1)
    store.add("a-b", "bob", "alice", mine)
    store.take_for_enc("bob", 1, **SAES)
    with pytest.raises(AlreadyDelivered):
        store.take_by_ids("bob", [mine[0][0]], sae="sae-alice-1", master_sae="sae-bob-1")


def test_dec_refuses_unknown_ids_and_keys_of_another_master_or_peer_taking_none(store):
    bobs, mine, carols = keys(1), keys(1), keys(1)
    store.add("a-b", "bob", "bob", bobs)
    store.add("a-b", "bob", "alice", mine)
    store.add("a-c", "carol", "carol", carols)
    ok = bobs[0][0]
    for ids, error in (([ok, uuid.uuid4()], UnknownKey),
                       ([ok, mine[0][0]], KeyNotForCaller),     # served through enc_keys here
                       ([ok, carols[0][0]], KeyNotForCaller)):  # another peer's key
        with pytest.raises(error):
            store.take_by_ids("bob", ids, sae="sae-alice-1", master_sae="sae-bob-1")
    assert store.count("bob", "bob") == 1 and store.count("carol", "carol") == 1
    assert store.refused_total == {"unknown_key": 1, "not_for_caller": 2}
    with pytest.raises(ValueError, match="repeated"):
        store.take_by_ids("bob", [ok, ok], sae="sae-alice-1", master_sae="sae-bob-1")
    assert store.take_by_ids("bob", [ok], sae="sae-alice-1", master_sae="sae-bob-1") == bobs


def test_the_delivered_ids_are_bounded(store):
    batch = keys(8)
    store.add("a-b", "bob", "alice", batch)
    store.take_for_enc("bob", 8, **SAES)
    assert store.delivered_count() == 5
    with pytest.raises(UnknownKey):  # forgotten: the oldest ids fall out of the table
        store.take_by_ids("bob", [batch[0][0]], sae="s", master_sae="m")
    with pytest.raises(AlreadyDelivered):
        store.take_by_ids("bob", [batch[-1][0]], sae="s", master_sae="m")


def test_the_bound_per_link_drops_and_counts(store):
    assert store.add("a-b", "bob", "alice", keys(6)) == 6
    assert store.add("a-b", "bob", "bob", keys(6)) == 4
    assert store.add("a-c", "carol", "alice", keys(3)) == 3  # another link, its own bound
    assert store.count_link("a-b") == 10 and store.dropped_total == 2
    assert store.add("a-b", "bob", "alice", keys(1)) == 0 and store.dropped_total == 3
    store.take_for_enc("bob", 2, **SAES)
    assert store.add("a-b", "bob", "alice", keys(5)) == 2 and store.dropped_total == 6


def test_a_duplicate_or_a_wrong_length_stores_nothing(store):
    first = keys(2)
    store.add("a-b", "bob", "alice", first)
    fresh = keys(2)
    with pytest.raises(ValueError, match="already"):
        store.add("a-b", "bob", "alice", [*fresh, first[1]])
    with pytest.raises(ValueError, match="twice"):
        store.add("a-b", "bob", "alice", [fresh[0], fresh[0]])
    with pytest.raises(ValueError, match="31 bytes"):
        store.add("a-b", "bob", "alice", [*fresh, (uuid.uuid4(), b"\x01" * 31)])
    assert store.count_link("a-b") == 2
    store.take_for_enc("bob", 2, **SAES)
    with pytest.raises(ValueError, match="handed out"):  # a delivered id cannot come back
        store.add("a-b", "bob", "alice", first[:1])
    with pytest.raises(ValueError, match="master_node"):
        store.add("a-b", "bob", "carol", fresh)
    assert store.count_link("a-b") == 0 and store.added_total == 2


def test_the_files_are_private_and_deletion_is_secure(tmp_path):
    path = tmp_path / "keys.sqlite"
    store = KeyStore(path, "alice")
    try:
        store.add("a-b", "bob", "alice", keys(1))
        for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert store._db.execute("PRAGMA secure_delete").fetchone() == (1,)
        assert store._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        store.close()


def test_a_taken_key_leaves_no_copy_in_the_files(tmp_path):
    path = tmp_path / "keys.sqlite"
    store = KeyStore(path, "alice")
    try:
        taken = keys(3, fill=0xA7)
        kept = keys(1, fill=0x5C)
        store.add("a-b", "bob", "alice", taken)
        store.add("a-b", "bob", "alice", kept)

        def on_disk() -> bytes:
            return b"".join(f.read_bytes() for f in path.parent.iterdir()
                            if f.name.startswith(path.name))

        assert bytes([0xA7]) * 32 in on_disk()
        store.take_for_enc("bob", 3, master_sae="m", slave_sae="s")
        assert bytes([0xA7]) * 32 not in on_disk()
        assert bytes([0x5C]) * 32 in on_disk()  # the search would have found a stored key
    finally:
        store.close()


def test_no_key_material_in_reprs_or_errors(store):
    secret = bytes(range(1, 33))
    batch = [(uuid.uuid4(), secret)]
    store.add("a-b", "bob", "alice", batch)
    texts = [repr(store)]
    try:
        store.add("a-b", "bob", "alice", batch)
    except ValueError as e:
        texts.append(str(e))
    try:
        store.take_for_enc("bob", 2, **SAES)
    except KeysExhausted as e:
        texts.append(str(e))
    taken = store.take_for_enc("bob", 1, **SAES)
    texts += [repr(taken), str(taken), repr(store.counters())]
    assert taken[0].material == secret and taken[0] == batch[0]
    for text in texts:
        assert secret.hex() not in text and repr(secret) not in text
        assert repr(secret)[2:-1] not in text, text


def test_reopening_keeps_the_keys_and_checks_the_owner(tmp_path):
    path = tmp_path / "keys.sqlite"
    batch = keys(2)
    with KeyStore(path, "alice") as s:
        s.add("a-b", "bob", "alice", batch)
    with KeyStore(path, "alice") as s:
        assert s.take_for_enc("bob", 2, **SAES) == batch
    with pytest.raises(ValueError, match="node 'alice'"):
        KeyStore(path, "bob")
