"""HMAC keys by name, with a changeover window: the first key of a name signs, every key of it
verifies.

A name is what the bus looks a key up under: a peer node (``ll``/``proto``/``tags``) or a link
id (``herald``). During a key rotation a name holds two keys, the new one and the old one, so
messages signed by a peer that has not switched yet still verify
(docs/operators/keys-and-identity.md).

**Key files** (``hmac_key_file``): one key per non-empty line, surrounding whitespace stripped
(a one-line file is the whole stripped file, as before), at most two lines: line 1 signs, every
line verifies. :func:`read_key_file` refuses a missing, unreadable or non-regular file, a file any
group or other user may access (mode & 0o077), an empty file, a key shorter than
:data:`MIN_KEY_BYTES` and more than :data:`MAX_KEYS` keys.

**Rotation without downtime**: :meth:`KeyRing.reload` (every ~2 s in :meth:`KeyRing.watch`)
re-reads each file whose inode, size, mtime, ctime or mode changed; a valid file replaces its
names' keys at once, an invalid one keeps the old keys and is logged and counted
(``reload_errors``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

log = logging.getLogger("qnode.keys")

#: the shortest key accepted (bytes): HMAC-SHA256 keys should carry at least 128 bits
MIN_KEY_BYTES = 16
#: keys per file: the current one and, during a changeover, the next
MAX_KEYS = 2
#: a key file larger than this is not a key file
MAX_FILE_BYTES = 4096
#: the period of :meth:`KeyRing.watch` (s), as documented in docs/operators/keys-and-identity.md
RELOAD_INTERVAL_S = 2.0


class KeyFileError(ValueError):
    """A key file cannot be used: ``key file '<path>' <problem>`` (never shows a key)."""

    def __init__(self, path: str | os.PathLike[str], problem: str):
        super().__init__(f"key file {os.fspath(path)!r} {problem}")
        self.path = Path(path)
        self.problem = problem


#: what identifies one version of a file: (device, inode, size, mtime ns, ctime ns, mode)
FileVersion = tuple[int, int, int, int, int, int]


def _version(st: os.stat_result) -> FileVersion:
    # ctime and mode too: a chmod changes neither mtime nor size, and must be noticed
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def _read(path: Path) -> tuple[tuple[bytes, ...], FileVersion]:
    """The keys of ``path`` and the version read (see :func:`read_key_file`)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
    except FileNotFoundError:
        raise KeyFileError(path, "does not exist") from None
    except OSError as exc:
        raise KeyFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)  # of the file opened, not of whatever the path names a moment later
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(path, "is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(path, f"is accessible by group or others (mode {mode:04o}); "
                                     f"make it the node user's alone: chmod 600")
        try:
            data = os.read(fd, MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise KeyFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise KeyFileError(path, f"is larger than {MAX_FILE_BYTES} bytes: not a key file")
    keys = tuple(k for k in (line.strip() for line in data.splitlines()) if k)
    if not keys:
        raise KeyFileError(path, "is empty: it must hold the link key")
    for i, k in enumerate(keys):
        if len(k) < MIN_KEY_BYTES:
            raise KeyFileError(path, f"has a key of {len(k)} bytes on line {i + 1}, shorter "
                                     f"than {MIN_KEY_BYTES} (make one: openssl rand -hex 32)")
    if len(keys) > MAX_KEYS:
        raise KeyFileError(path, f"holds {len(keys)} keys; at most {MAX_KEYS} (the signing key "
                                 f"and, during a rotation, one more)")
    return keys, _version(st)


def read_key_file(path: str | os.PathLike[str]) -> tuple[bytes, ...]:
    """The keys of a key file, the signing key first; :class:`KeyFileError` if it is missing,
    unreadable, not a regular file, accessible by group/others, empty, holds a key shorter than
    :data:`MIN_KEY_BYTES` bytes or more than :data:`MAX_KEYS` keys."""
    return _read(Path(path))[0]


def write_key_file(path: str | os.PathLike[str], *keys: bytes | str) -> Path:
    """Write ``keys`` (one per line, the signing key first) to ``path``, mode 0600 from its
    creation (an existing file is tightened to 0600 before it is written)."""
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask, or the mode of a file already there
        os.write(fd, b"".join((k.encode() if isinstance(k, str) else k) + b"\n" for k in keys))
    finally:
        os.close(fd)
    return p


class KeyRing(Mapping[str, bytes]):
    """Keys by name. ``ring[name]`` is the signing key; :meth:`verifying` every accepted key.

    Names loaded from a key file (:meth:`load_file`) follow that file:
    :meth:`reload` re-reads it when it changed. ``reload_errors`` counts the changed files that
    were refused (their names kept their keys)."""

    def __init__(self, keys: Mapping[str, bytes | Sequence[bytes]] | None = None):
        self._keys: dict[str, tuple[bytes, ...]] = {}
        self._source: dict[str, Path] = {}  # name -> the key file it follows
        self._seen: dict[Path, FileVersion | None] = {}  # file -> version last looked at
        self.reload_errors = 0
        for name, value in (keys or {}).items():
            self.set(name, value)

    @classmethod
    def of(cls, keys: KeyRing | Mapping[str, bytes | Sequence[bytes]] | None) -> KeyRing:
        """``keys`` itself when it is a ring (shared, so reloads reach every holder), else a new
        ring of it."""
        return keys if isinstance(keys, KeyRing) else cls(keys)

    def set(self, name: str, keys: bytes | Sequence[bytes]) -> None:
        """Name ``name``'s keys: one key, or several (the first signs). The name stops
        following a key file it was loaded from."""
        self._set(name, keys)
        self._forget(name)

    def _set(self, name: str, keys: bytes | Sequence[bytes]) -> None:
        ring = (keys,) if isinstance(keys, bytes | bytearray) else tuple(keys)
        if not ring or any(not isinstance(k, bytes | bytearray) or not k for k in ring):
            raise ValueError(f"keys of {name!r} must be one or more non-empty byte strings")
        self._keys[name] = tuple(bytes(k) for k in ring)

    def _forget(self, name: str) -> None:
        path = self._source.pop(name, None)
        if path is not None and path not in self._source.values():
            del self._seen[path]

    def load_file(self, path: str | os.PathLike[str], *names: str) -> tuple[bytes, ...]:
        """Read key file ``path`` (:func:`read_key_file`; :class:`KeyFileError` if refused)
        and give its keys to every name of ``names``, which then follow the file
        (:meth:`reload`). Loading a file again re-reads it. Returns the keys."""
        p = Path(path)
        keys, version = _read(p)
        for name in names:
            self._set(name, keys)
            self._forget(name)
            self._source[name] = p
        if names:
            self._seen[p] = version
        return keys

    def files(self) -> dict[Path, tuple[str, ...]]:
        """The key files followed, with the names each gives keys to."""
        out: dict[Path, list[str]] = {}
        for name, path in self._source.items():
            out.setdefault(path, []).append(name)
        return {p: tuple(n) for p, n in out.items()}

    def reload(self) -> list[str]:
        """Re-read every followed key file whose inode, size, mtime, ctime or mode changed since
        it was last looked at. A valid file replaces its names' keys at once (no await in
        between: a message never sees half a change); a refused one (missing, unreadable,
        loose mode, empty, short or too many keys) keeps the old keys, counts in
        ``reload_errors`` and logs one error line, once per version of the file. Returns the
        names whose keys changed."""
        changed: list[str] = []
        for path, names in self.files().items():
            try:
                now: FileVersion | None = _version(os.stat(path))
            except OSError:
                now = None
            if now == self._seen.get(path):
                continue
            try:
                keys, now = _read(path)
            except KeyFileError as exc:
                self._seen[path] = now
                self.reload_errors += 1
                log.error("key file refused, keeping the keys in use", extra={
                    "file": str(path), "names": ",".join(names), "error": exc.problem,
                    "reload_errors": self.reload_errors})
                continue
            self._seen[path] = now
            updated = [n for n in names if self._keys.get(n) != keys]
            for name in updated:
                self._keys[name] = keys
            if updated:
                changed += updated
                log.info("keys reloaded", extra={"file": str(path), "names": ",".join(updated),
                                                 "keys": len(keys)})
        return changed

    async def watch(self, interval_s: float = RELOAD_INTERVAL_S) -> None:
        """:meth:`reload` every ``interval_s`` seconds, forever (a supervised task of the
        node). A refused file is logged by :meth:`reload`, never raised."""
        while True:
            await asyncio.sleep(interval_s)
            self.reload()

    def __setitem__(self, name: str, key: bytes | Sequence[bytes]) -> None:
        self.set(name, key)

    def __getitem__(self, name: str) -> bytes:
        return self._keys[name][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def verifying(self, name: str) -> tuple[bytes, ...]:
        """Every key a message under ``name`` may be signed with (signing key first); empty
        when the name has none."""
        return self._keys.get(name, ())
