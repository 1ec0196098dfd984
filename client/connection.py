"""The connection file: where a network's broker is and who may use it, in one JSON file.

``qnode demo --serve`` writes one (default ``./qnode-demo.json``) once its network is up and
removes it when it stops; :class:`~qnode.client.node.NodeClient`, the blocking wrapper and the
``qnode request`` / ``qnode listen`` commands accept it. An operator can write one by hand for
a real network::

    {
      "qnode_connection": 1,
      "broker": {"url": "mqtts://broker.lab:8883", "ca_file": "ca.crt"},
      "network": "lab",
      "nodes": ["alice", "bob"],
      "applications": {
        "keyapp": {"node": "alice", "purposes": [9], "username": "keyapp",
                   "password": null, "client_cert": "keyapp.crt", "client_key": "keyapp.key"}
      }
    }

Relative file names are taken from the file's folder. The file can hold passwords: it is
written readable by its owner only.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: the format's version (the file's ``qnode_connection`` field)
FORMAT_VERSION = 1
#: where ``qnode demo --serve`` writes it, and where the CLI looks, by default
DEFAULT_PATH = "qnode-demo.json"


class ConnectionFileError(ValueError):
    """A connection file that cannot be read or lacks what is asked of it."""


@dataclass(frozen=True)
class ApplicationInfo:
    """One application of the network: its ``name`` (the envelope's sender and its topics),
    the ``node`` that serves it, the ``purposes`` it may listen on, and its broker credentials
    (a user name and password, or a client certificate and key for ``mqtts``)."""

    name: str
    node: str
    purposes: tuple[int, ...] = ()
    username: str | None = None
    password: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["name"]
        d["purposes"] = list(self.purposes)
        return d


@dataclass(frozen=True)
class ConnectionInfo:
    """A network as a client needs it: the broker's URL (``mqtt://host:port`` or
    ``mqtts://...`` with ``ca_file``), the ``network`` name of the topics, its ``nodes`` and
    its ``applications`` by name. ``pid``: the process serving the network (``qnode demo
    --serve``), if any; ``created``: when the file was written (Unix time, s)."""

    broker_url: str
    network: str
    nodes: tuple[str, ...] = ()
    applications: Mapping[str, ApplicationInfo] = field(default_factory=dict)
    ca_file: str | None = None
    description: str = ""
    pid: int | None = None
    created: float | None = None

    def application(self, name: str) -> ApplicationInfo:
        """The application ``name``; :class:`ConnectionFileError` naming the ones there are."""
        try:
            return self.applications[name]
        except KeyError:
            raise ConnectionFileError(
                f"no application {name!r} in the connection file (it has "
                f"{', '.join(sorted(self.applications)) or 'none'})") from None

    def client_options(self, application: str, node: str | None = None) -> dict[str, Any]:
        """Keyword arguments for :class:`~qnode.client.node.NodeClient` as ``application``,
        talking to its own node (or ``node``)."""
        app = self.application(application)
        return {"broker_url": self.broker_url, "network": self.network,
                "application": app.name, "node": node or app.node,
                "username": app.username, "password": app.password,
                "ca_file": self.ca_file, "client_cert": app.client_cert,
                "client_key": app.client_key}

    # -------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {"qnode_connection": FORMAT_VERSION,
                "broker": {"url": self.broker_url, "ca_file": self.ca_file},
                "network": self.network, "nodes": list(self.nodes),
                "applications": {n: a.to_dict() for n, a in sorted(self.applications.items())},
                "description": self.description, "pid": self.pid, "created": self.created}

    @classmethod
    def from_dict(cls, d: Any, base: Path | None = None) -> ConnectionInfo:
        """Parse a connection file's object; relative file names are taken from ``base``.
        :class:`ConnectionFileError` naming what is wrong."""
        if not isinstance(d, Mapping):
            raise ConnectionFileError("a connection file holds a JSON object")
        version = d.get("qnode_connection")
        if version != FORMAT_VERSION:
            raise ConnectionFileError(f"qnode_connection: expected {FORMAT_VERSION}, got "
                                      f"{version!r}")
        broker = d.get("broker")
        if not isinstance(broker, Mapping) or not isinstance(broker.get("url"), str):
            raise ConnectionFileError("broker.url: missing")
        url = broker["url"]
        if urlsplit(url).scheme not in ("mqtt", "mqtts") or not urlsplit(url).hostname:
            raise ConnectionFileError(f"broker.url: {url!r} is not mqtt://host[:port] or "
                                      f"mqtts://host[:port]")
        network = d.get("network")
        if not isinstance(network, str) or not network:
            raise ConnectionFileError("network: missing")
        nodes = d.get("nodes", [])
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise ConnectionFileError("nodes: expected a list of node ids")
        apps_raw = d.get("applications", {})
        if not isinstance(apps_raw, Mapping):
            raise ConnectionFileError("applications: expected an object by name")
        apps: dict[str, ApplicationInfo] = {}
        for name, a in apps_raw.items():
            if not isinstance(a, Mapping) or not isinstance(a.get("node"), str):
                raise ConnectionFileError(f"applications.{name}.node: missing")
            purposes = a.get("purposes", [])
            if not isinstance(purposes, list) or not all(
                    isinstance(p, int) and not isinstance(p, bool) for p in purposes):
                raise ConnectionFileError(f"applications.{name}.purposes: expected a list of "
                                          f"integers")
            strings = {}
            for k in ("username", "password", "client_cert", "client_key"):
                v = a.get(k)
                if v is not None and not isinstance(v, str):
                    raise ConnectionFileError(f"applications.{name}.{k}: expected a string")
                strings[k] = v
            apps[name] = ApplicationInfo(
                name, a["node"], tuple(purposes), strings["username"], strings["password"],
                _resolve(strings["client_cert"], base), _resolve(strings["client_key"], base))
        pid, created = d.get("pid"), d.get("created")
        return cls(url, network, tuple(nodes), apps,
                   _resolve(broker.get("ca_file"), base), str(d.get("description") or ""),
                   pid if isinstance(pid, int) else None,
                   float(created) if isinstance(created, int | float) else None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConnectionInfo:
        """Read a connection file; :class:`ConnectionFileError` if it is missing or wrong."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConnectionFileError(f"{p}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConnectionFileError(f"{p}: not JSON ({exc})") from exc
        try:
            return cls.from_dict(data, p.resolve().parent)
        except ConnectionFileError as exc:
            raise ConnectionFileError(f"{p}: {exc}") from None

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the file atomically (a temporary file renamed over it), mode 0600."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:   # mkstemp: 0600 already
                json.dump(self.to_dict(), f, indent=2)
                f.write("\n")
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p


def _resolve(name: Any, base: Path | None) -> str | None:
    if not isinstance(name, str) or not name:
        return None
    p = Path(name).expanduser()
    return str(p if p.is_absolute() or base is None else base / p)
