"""HMAC key files and the key ring: what a key file may hold, which files are refused (in the
config as ``file: key: problem``), two keys during a rotation, and reloading without a restart."""
from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from pathlib import Path

import pytest

from qnode.daemon.bus.envelope import Message, MessageRejected, decode, encode
from qnode.daemon.bus.identity import keygen
from qnode.daemon.bus.keys import (
    MAX_FILE_BYTES,
    KeyFileError,
    KeyRing,
    read_key_file,
    write_key_file,
)
from qnode.daemon.bus.topics import Topics, parse_topic
from qnode.daemon.runtime.config import ConfigError, parse_config
from qnode.daemon.runtime.context import read_keys

OLD = b"old-key-0123456789abcdef0123456789"
NEW = b"new-key-0123456789abcdef0123456789"
HERALD = parse_topic(Topics("t", "station").herald("a-b"))


def _raw(path: Path, data: bytes, mode: int = 0o600) -> Path:
    """``data`` in ``path`` with exactly ``mode`` (not through write_key_file: the bytes as
    given, and modes it would never make)."""
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _touch_later(path: Path) -> None:
    """Make a rewrite visible whatever the file system's mtime resolution."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


# -- the file format
@pytest.mark.parametrize("data", [
    b"k" * 32, b"0123456789abcdef" * 4 + b"\n", b"  spaced-key-0123456789  \r\n",
    b"\tkey with inner spaces 0123\x0b\n\n", bytes(range(14, 128)),
])
def test_a_one_line_file_is_the_same_key_as_before(tmp_path, data):
    f = _raw(tmp_path / "k.key", data)
    assert read_key_file(f) == (data.strip(),)   # what the node read before: the stripped file
    ring = KeyRing()
    ring.load_file(f, "bob", "a-b")
    assert ring["bob"] == ring["a-b"] == data.strip()


def test_a_two_line_file_signs_with_the_first_and_verifies_with_both(tmp_path):
    f = _raw(tmp_path / "k.key", NEW + b"\n\n" + OLD + b"\n")
    ring = KeyRing()
    ring.load_file(f, "a-b")
    assert ring["a-b"] == NEW and ring.verifying("a-b") == (NEW, OLD)
    signed = encode(Message("HERALD", "station", 1, {"n": 1}), key=ring["a-b"])
    assert decode(signed, HERALD, key=ring.verifying("a-b")).body == {"n": 1}
    # the peer that has not switched yet signs with the old key: still accepted
    by_old = encode(Message("HERALD", "station", 2, {"n": 2}), key=OLD)
    assert decode(by_old, HERALD, key=ring.verifying("a-b")).id == 2
    forged = encode(Message("HERALD", "station", 3, {}), key=b"x" * 32)
    with pytest.raises(MessageRejected) as err:
        decode(forged, HERALD, key=ring.verifying("a-b"))
    assert err.value.reason == "bad_signature"


def test_write_key_file_creates_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        f = write_key_file(tmp_path / "k.key", NEW, OLD)
    finally:
        os.umask(old)
    assert f.stat().st_mode & 0o777 == 0o600
    assert read_key_file(f) == (NEW, OLD)
    _raw(f, NEW, 0o644)
    write_key_file(f, OLD)   # an existing loose file is tightened
    assert f.stat().st_mode & 0o777 == 0o600 and read_key_file(f) == (OLD,)


# -- refusals
REFUSED = [
    ("empty", b"", 0o600, "is empty"),
    ("blank", b" \n\n\t\n", 0o600, "is empty"),
    ("short", b"short-key\n", 0o600, "has a key of 9 bytes on line 1, shorter than 16"),
    ("short second", NEW + b"\nshort\n", 0o600, "on line 2"),
    ("three keys", NEW + b"\n" + OLD + b"\n" + b"z" * 32 + b"\n", 0o600, "holds 3 keys"),
    ("world-readable", NEW, 0o644, "accessible by group or others (mode 0644)"),
    ("group-readable", NEW, 0o640, "(mode 0640)"),
    ("group-writable", NEW, 0o620, "(mode 0620)"),
    ("huge", b"k" * (MAX_FILE_BYTES + 1), 0o600, "not a key file"),
]


@pytest.mark.parametrize("name, data, mode, problem", REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_key_files_are_refused_with_the_reason(tmp_path, name, data, mode, problem):
    f = _raw(tmp_path / "k.key", data, mode)
    with pytest.raises(KeyFileError) as err:
        read_key_file(f)
    assert problem in str(err.value) and str(f) in str(err.value)
    assert NEW.decode() not in str(err.value)   # a message never shows a key


def test_missing_and_non_regular_key_files_are_refused(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        read_key_file(tmp_path / "nope.key")
    with pytest.raises(KeyFileError, match="is not a regular file"):
        read_key_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="is not a regular file"):   # and does not block
        read_key_file(fifo)


IDS = tempfile.mkdtemp(prefix="qnode-test-identity-")  # every node's identity; the OS cleans
for _node in ("alice", "station"):
    keygen(_node, IDS)
NODE = f"""
[node]
id = "alice"
network = "t"
roles = ["memory"]
trust_dir = "{IDS}"
""" + """state_dir = "{state}"
[broker]
url = "mqtt://127.0.0.1"
"""


def _link(ltype: str, key: Path | None) -> str:
    text = f'[[links]]\nid = "a-b"\npeer = "bob"\ntype = "{ltype}"\n'
    if ltype == "K":
        text += 'herald = "station"\n'
    return text + (f'hmac_key_file = "{key}"\n' if key is not None else "")


@pytest.mark.parametrize("name, data, mode, problem", REFUSED, ids=[r[0] for r in REFUSED])
def test_the_config_names_the_file_and_the_key_of_a_refused_key_file(tmp_path, name, data, mode,
                                                                     problem):
    f = _raw(tmp_path / "k.key", data, mode)
    for ltype in ("K", "M"):
        with pytest.raises(ConfigError) as err:
            parse_config(NODE.format(state=tmp_path) + _link(ltype, f), "alice.toml")
        assert err.value.key == "links[0].hmac_key_file"
        assert str(err.value).startswith(f"alice.toml: links[0].hmac_key_file: key file '{f}' ")
        assert problem in str(err.value)


def test_a_k_link_without_a_key_file_is_refused_an_m_link_may_go_without(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(NODE.format(state=tmp_path) + _link("K", None), "alice.toml")
    assert str(err.value).startswith("alice.toml: links[0].hmac_key_file: is required: ")
    assert "signed" in err.value.problem
    assert parse_config(NODE.format(state=tmp_path) + _link("M", None)).links[0].hmac_key_file \
        is None


STATION = f"""
[node]
id = "station"
network = "t"
roles = ["herald"]
identity_key_file = "{IDS}/station.key"
""" + """state_dir = "{state}"
[broker]
url = "mqtt://127.0.0.1"
[instruments.tagger]
kind = "id900"
address = "127.0.0.1"
[herald]
link = "a-b"
ends = ["alice", "bob"]
"""


def test_a_station_without_its_key_file_is_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(STATION.format(state=tmp_path), "s.toml")
    assert err.value.key == "herald.hmac_key_file" and "is required" in str(err.value)
    f = _raw(tmp_path / "k.key", NEW, 0o604)
    with pytest.raises(ConfigError, match=r"^s.toml: herald.hmac_key_file: key file .* 0604"):
        parse_config(STATION.format(state=tmp_path) + f'hmac_key_file = "{f}"\n', "s.toml")


def test_the_ring_of_a_config_holds_every_name_the_bus_looks_up(tmp_path):
    link = write_key_file(tmp_path / "a-b.key", NEW, OLD)
    cfg = parse_config(NODE.format(state=tmp_path) + _link("K", link))
    ring = read_keys(cfg)
    assert dict(ring) == {"bob": NEW, "a-b": NEW}
    assert ring.verifying("bob") == (NEW, OLD) and ring.verifying("carol") == ()
    assert ring.files() == {link: ("bob", "a-b")}
    herald = write_key_file(tmp_path / "h.key", OLD)
    station = read_keys(parse_config(STATION.format(state=tmp_path)
                                               + f'hmac_key_file = "{herald}"\n'))
    assert dict(station) == {"a-b": OLD}


def test_a_name_set_by_hand_stops_following_its_file(tmp_path):
    f = write_key_file(tmp_path / "k.key", OLD)
    ring = KeyRing()
    ring.load_file(f, "a-b")
    ring.set("a-b", NEW)
    write_key_file(f, b"z" * 32)
    _touch_later(f)
    assert ring.reload() == [] and ring["a-b"] == NEW and ring.files() == {}


# -- reloading
def test_reload_picks_up_a_rotation_step_by_step(tmp_path):
    f = write_key_file(tmp_path / "a-b.key", OLD)
    ring = KeyRing()
    ring.load_file(f, "bob", "a-b")
    assert ring.reload() == []                    # nothing changed: nothing re-read
    write_key_file(f, OLD, NEW)                   # 1. the next key as a second line
    _touch_later(f)
    assert ring.reload() == ["bob", "a-b"]
    assert ring["a-b"] == OLD and ring.verifying("a-b") == (OLD, NEW)
    write_key_file(f, NEW, OLD)                   # 2. swap: sign with the new one
    _touch_later(f)
    assert ring.reload() == ["bob", "a-b"] and ring["bob"] == NEW
    tmp = write_key_file(tmp_path / "a-b.key.tmp", NEW)
    tmp.replace(f)                                # 3. drop the old one (an atomic rename)
    assert ring.reload() == ["bob", "a-b"] and ring.verifying("a-b") == (NEW,)
    assert ring.reload_errors == 0


def test_an_invalid_edit_keeps_the_old_keys_and_is_logged_once(tmp_path, caplog):
    f = write_key_file(tmp_path / "a-b.key", NEW, OLD)
    ring = KeyRing()
    ring.load_file(f, "bob", "a-b")
    caplog.set_level(logging.INFO, logger="qnode.keys")
    f.write_bytes(b"")                            # an empty file
    _touch_later(f)
    assert ring.reload() == [] and ring.verifying("a-b") == (NEW, OLD)
    assert ring.reload() == []                    # the same bad version: not logged again
    assert ring.reload_errors == 1
    [rec] = [r for r in caplog.records if r.name == "qnode.keys"]
    assert rec.levelname == "ERROR" and rec.file == str(f) and rec.names == "bob,a-b"
    assert "is empty" in rec.error and NEW.decode() not in rec.getMessage()
    f.chmod(0o644)
    f.write_bytes(NEW + b"\n")                    # a valid key, but world-readable
    assert ring.reload() == [] and ring.reload_errors == 2 and ring["a-b"] == NEW
    assert "mode 0644" in caplog.records[-1].error
    f.unlink()                                    # gone
    assert ring.reload() == [] and ring.reload_errors == 3 and ring.verifying("bob") == (NEW, OLD)
    assert "does not exist" in caplog.records[-1].error
    write_key_file(f, OLD)                        # fixed: taken at once
    assert ring.reload() == ["bob", "a-b"] and ring.verifying("a-b") == (OLD,)
    assert caplog.records[-1].levelname == "INFO" and caplog.records[-1].names == "bob,a-b"


def test_a_chmod_alone_is_noticed(tmp_path, caplog):
    f = write_key_file(tmp_path / "a-b.key", NEW)
    ring = KeyRing()
    ring.load_file(f, "a-b")
    f.chmod(0o644)   # changes neither size nor mtime
    assert ring.reload() == [] and ring.reload_errors == 1 and ring["a-b"] == NEW


@pytest.mark.asyncio
async def test_watch_reloads_in_the_background(tmp_path):
    f = write_key_file(tmp_path / "a-b.key", OLD)
    ring = KeyRing()
    ring.load_file(f, "a-b")
    task = asyncio.create_task(ring.watch(0.02))
    try:
        write_key_file(f, NEW, OLD)
        _touch_later(f)
        async with asyncio.timeout(5):
            while ring["a-b"] != NEW:
                await asyncio.sleep(0.01)
        assert ring.verifying("a-b") == (NEW, OLD)
        assert not task.done()
    finally:
        task.cancel()
