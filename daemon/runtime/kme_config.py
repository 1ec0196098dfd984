"""The ``[kme]`` table of a node's configuration: where the KME listens, its TLS files, its key
store and the SAEs of the network. Layout::

    [kme]
    listen = "127.0.0.1:8443"         # host:port ([::1]:8443 for IPv6; port 0: any free port)
    kme_id = "kme-alice"              # optional: kme_ids[<node>], else "kme-<node>"
    cert = "/etc/qnode/kme/alice.crt" # the KME's server certificate and key
    key = "/etc/qnode/kme/alice.key"
    ca = "/etc/qnode/kme/sae-ca.crt"  # the CA that signs the SAEs' client certificates
    store = "/var/lib/qnode/alice/keys.sqlite"
    key_size_bits = 256               # the size of every key (a multiple of 8)
    max_key_count = 10000             # keys stored per link; more are dropped
    max_key_per_request = 128         # keys per enc_keys request, ids per dec_keys request
    saes = [                          # every SAE of the network: its id (the CN of its client
      {id = "sae-alice-1", node = "alice"},  #   certificate) and the node that hosts it
      {id = "sae-bob-1", node = "bob"},
    ]
    [kme.kme_ids]                     # optional: node -> KME id ("kme-<node>" if absent)
    bob = "kme-bob"

Every problem raises :class:`ValueError` naming the key (``kme.saes[1].node``) and what is
wrong.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import ssl
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: node names: as in MQTT topics
NODE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: SAE and KME ids: they appear in URL paths and certificate CNs
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
#: keys larger than this make responses large for no known use
MAX_KEY_SIZE_BITS = 65_536
#: ids per dec_keys request must fit the server's 64 KiB request bodies
MAX_KEYS_PER_REQUEST = 1000

_FIELDS = {"listen", "kme_id", "cert", "key", "ca", "store", "key_size_bits", "max_key_count",
           "max_key_per_request", "saes", "kme_ids"}


def _int(table: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"kme.{name} must be an integer, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"kme.{name} must be in [{low}, {high}], not {value}")
    return value


def _path(table: Mapping[str, Any], name: str) -> Path:
    value = table.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"kme.{name} is required: a file path")
    return Path(value)


def _id(value: object, where: str, pattern: re.Pattern[str] = ID_RE) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{where} must match {pattern.pattern}, not {value!r}")
    return value


def parse_listen(value: object) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:8443"`` for IPv6) as (host, port); port 0 = any free port."""
    if not isinstance(value, str):
        raise ValueError(f"kme.listen must be a string host:port, not {value!r}")
    host, sep, port = value.rpartition(":")
    bad = ValueError(f"kme.listen must be host:port or [IPv6]:port, not {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
    elif ":" in host:
        raise bad
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise bad
    return host, int(port)


def _saes(value: object) -> Mapping[str, str]:
    if not isinstance(value, list) or not value:
        raise ValueError("kme.saes must be a non-empty list of {id = ..., node = ...} tables")
    saes: dict[str, str] = {}
    for i, entry in enumerate(value):
        where = f"kme.saes[{i}]"
        if not isinstance(entry, Mapping) or set(entry) != {"id", "node"}:
            raise ValueError(f"{where} must be a table with exactly the keys id and node")
        sae = _id(entry["id"], f"{where}.id")
        if sae in saes:
            raise ValueError(f"{where}.id: SAE {sae!r} is listed twice")
        saes[sae] = _id(entry["node"], f"{where}.node", NODE_RE)
    return types.MappingProxyType(saes)


def _kme_ids(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError("kme.kme_ids must be a table node -> KME id")
    return types.MappingProxyType({_id(node, "a node in kme.kme_ids", NODE_RE):
                                   _id(kme, f"kme.kme_ids.{node}")
                                   for node, kme in value.items()})


@dataclasses.dataclass(frozen=True)
class KmeConfig:
    """The validated ``[kme]`` table of node ``node_id`` (see the module docstring)."""

    node_id: str
    host: str
    port: int
    kme_id: str
    cert: Path
    key: Path
    ca: Path
    store: Path
    saes: Mapping[str, str]  # SAE id -> the node that hosts it
    kme_ids: Mapping[str, str] = dataclasses.field(default_factory=dict)  # node -> KME id
    key_size_bits: int = 256
    max_key_count: int = 10_000
    max_key_per_request: int = 128

    @classmethod
    def from_table(cls, table: Mapping[str, Any], node_id: str) -> KmeConfig:
        """The config of node ``node_id`` from its ``[kme]`` TOML table (a plain dict)."""
        _id(node_id, "node_id", NODE_RE)
        if not isinstance(table, Mapping):
            raise ValueError("[kme] must be a table")
        unknown = sorted(set(table) - _FIELDS)
        if unknown:
            raise ValueError(f"kme: unknown key(s) {', '.join(unknown)}")
        host, port = parse_listen(table.get("listen", "127.0.0.1:8443"))
        key_size_bits = _int(table, "key_size_bits", 256, 8, MAX_KEY_SIZE_BITS)
        if key_size_bits % 8:
            raise ValueError(f"kme.key_size_bits must be a multiple of 8, not {key_size_bits}")
        max_key_count = _int(table, "max_key_count", 10_000, 1, 10**9)
        max_per_request = _int(table, "max_key_per_request", 128, 1,
                               min(MAX_KEYS_PER_REQUEST, max_key_count))
        kme_ids = _kme_ids(table.get("kme_ids", {}))
        default_kme_id = kme_ids.get(node_id, f"kme-{node_id}")
        kme_id = _id(table.get("kme_id", default_kme_id), "kme.kme_id")
        if kme_id != default_kme_id and node_id in kme_ids:
            raise ValueError(f"kme.kme_id {kme_id!r} differs from kme.kme_ids.{node_id} "
                             f"{default_kme_id!r}")
        return cls(node_id=node_id, host=host, port=port, kme_id=kme_id,
                   cert=_path(table, "cert"), key=_path(table, "key"), ca=_path(table, "ca"),
                   store=_path(table, "store"), saes=_saes(table.get("saes")),
                   kme_ids=kme_ids, key_size_bits=key_size_bits,
                   max_key_count=max_key_count, max_key_per_request=max_per_request)

    def server_ssl_context(self) -> ssl.SSLContext:
        """The KME's TLS context: TLS ≥ 1.2, its certificate, client certificates required and
        verified against ``ca`` (:class:`ssl.SSLError` or ValueError when the files do not
        load)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        ctx.load_verify_locations(cafile=self.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def node_of(self, sae: str) -> str | None:
        """The node hosting SAE ``sae``, or None for an SAE not in ``saes``."""
        return self.saes.get(sae)

    def kme_id_of(self, node: str) -> str:
        """The KME id of ``node``: this node's ``kme_id``, else ``kme_ids``, else
        ``kme-<node>``."""
        if node == self.node_id:
            return self.kme_id
        return self.kme_ids.get(node, f"kme-{node}")

    def local_saes(self) -> list[str]:
        """The SAEs hosted at this node."""
        return sorted(sae for sae, node in self.saes.items() if node == self.node_id)
