"""Node identity keys: Ed25519 signatures on what only one node may say.

A link key (HMAC, :mod:`qnode.daemon.bus.keys`) is shared by the two ends of a link, so either end
could forge the other's words; that is fine for the link's own messages, but not for what a third
party says to both ends, nor for what everyone reads. A node's *identity key* is its own: it signs

* a herald station's ``HERALD`` batches (both ends verify them; neither can forge them),
* every node's retained ``status`` (and its last will) and ``telemetry``, which ``qnode status``
  and operators' tools verify.

Keys are Ed25519 (RFC 8032) through the ``cryptography`` package, stored as PEM: the private key
(PKCS#8, ``openssl genpkey -algorithm ed25519``) in a file only the node's user may read, the
public keys of the network's nodes in one directory as ``<node>.pub`` (SubjectPublicKeyInfo,
``openssl pkey -pubout``), which every node and operator holds. ``qnode keygen`` makes both.

A signature is the unpadded URL-safe base64 of the 64-byte Ed25519 signature of the envelope's
canonical JSON without its signature fields (:func:`~.envelope.canonical`), in the envelope's
``nodesig`` field.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

#: a public key file is ``<node>.pub`` in the trust directory
PUBLIC_SUFFIX = ".pub"
#: length of an encoded signature (64 bytes, unpadded base64)
SIGNATURE_CHARS = 86
_SIG = re.compile(r"[A-Za-z0-9_-]{86}")
_NODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAX_PEM_BYTES = 4096


class IdentityError(ValueError):
    """An identity key file cannot be used (the message names the file and the problem)."""


def _read_pem(path: Path, *, private: bool) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise IdentityError(f"key file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise IdentityError(f"key file {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(f"key file {str(path)!r} is not a regular file")
        if private and stat.S_IMODE(st.st_mode) & 0o077:
            raise IdentityError(f"key file {str(path)!r} is accessible by group or others "
                                f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600")
        data = os.read(fd, _MAX_PEM_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_PEM_BYTES:
        raise IdentityError(f"key file {str(path)!r} is larger than {_MAX_PEM_BYTES} bytes")
    return data


class NodeSigner:
    """A node's private identity key: :meth:`sign` gives the ``nodesig`` of some bytes."""

    def __init__(self, key: Ed25519PrivateKey):
        self._key = key

    @classmethod
    def generate(cls) -> NodeSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> NodeSigner:
        """Load a PKCS#8 PEM Ed25519 private key; :class:`IdentityError` if the file is
        missing, readable by group or others, or not such a key."""
        p = Path(path)
        data = _read_pem(p, private=True)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"key file {str(p)!r} is not an unencrypted PEM private key "
                                f"({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"key file {str(p)!r} is not an Ed25519 key")
        return cls(key)

    def sign(self, data: bytes) -> str:
        return base64.urlsafe_b64encode(self._key.sign(data)).rstrip(b"=").decode("ascii")

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def write(self, private_path: Path, public_path: Path) -> None:
        """Store the private key (0600 from creation) and the public key (0644)."""
        pem = self._key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        public_path.write_bytes(self.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def decode_signature(sig: object) -> bytes | None:
    """The 64 signature bytes of a ``nodesig`` value, or None when it is not one."""
    if not isinstance(sig, str) or not _SIG.fullmatch(sig):
        return None
    try:
        return base64.urlsafe_b64decode(sig + "==")
    except (binascii.Error, ValueError):
        return None


class TrustStore(Mapping[str, Ed25519PublicKey]):
    """The public identity keys of a network's nodes, by node id."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey] | None = None):
        self._keys = dict(keys or {})

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str]) -> TrustStore:
        """Every ``<node>.pub`` of ``directory``; :class:`IdentityError` for a file that is not
        an Ed25519 public key (other files are ignored)."""
        d = Path(directory)
        if not d.is_dir():
            raise IdentityError(f"trust directory {str(d)!r} is not a directory")
        keys: dict[str, Ed25519PublicKey] = {}
        for path in sorted(d.glob(f"*{PUBLIC_SUFFIX}")):
            node = path.name[:-len(PUBLIC_SUFFIX)]
            if not _NODE.match(node):
                continue
            data = _read_pem(path, private=False)
            try:
                key = serialization.load_pem_public_key(data)
            except (ValueError, TypeError) as exc:
                raise IdentityError(f"key file {str(path)!r} is not a PEM public key "
                                    f"({exc})") from None
            if not isinstance(key, Ed25519PublicKey):
                raise IdentityError(f"key file {str(path)!r} is not an Ed25519 key")
            keys[node] = key
        return cls(keys)

    def add(self, node: str, key: Ed25519PublicKey) -> None:
        self._keys[node] = key

    def verify(self, node: str, data: bytes, sig: object) -> bool:
        """True when ``sig`` (a ``nodesig`` value) is ``node``'s signature of ``data``."""
        key = self._keys.get(node)
        raw = decode_signature(sig)
        if key is None or raw is None:
            return False
        try:
            key.verify(raw, data)
        except InvalidSignature:
            return False
        return True

    def __getitem__(self, node: str) -> Ed25519PublicKey:
        return self._keys[node]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def keygen(node: str, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Make ``<node>.key`` (private, 0600) and ``<node>.pub`` in ``directory`` (created
    0700 if missing); refuses to overwrite an existing private key."""
    if not _NODE.match(node):
        raise IdentityError(f"node id {node!r} may use only letters, digits, - and _")
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    private, public = d / f"{node}.key", d / f"{node}{PUBLIC_SUFFIX}"
    if private.exists():
        raise IdentityError(f"{str(private)!r} exists; not overwriting an identity key")
    NodeSigner.generate().write(private, public)
    return private, public
