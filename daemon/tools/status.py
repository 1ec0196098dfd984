"""``qnode status``: a network (or one node) as seen over MQTT (docs/operators/monitoring.md).

:func:`collect` connects with a clean session and a random client id, subscribes to every
node's ``status`` (retained; ``offline`` by last will when a node vanished) and ``telemetry``
under ``qnet/v1/<network>/``, listens for ``wait_s`` seconds and returns one :class:`NodeView`
per node heard. :func:`format_status` prints one block per node: its state, roles,
instruments, node figures and a table of its link ends (shared with the demo's live view,
:mod:`qnode.daemon.tools.liveview`), and the age of its last telemetry.

Every node signs its status and telemetry with its identity key
(:mod:`qnode.daemon.bus.identity`). Given the
network's public keys (``--trust DIR``, or the ``trust_dir`` of ``--config``), only messages
carrying their node's valid signature are shown: an unsigned or mis-signed one (a forged
``offline``, a "ghost" node nobody holds a key for) is ignored and counted by reason in
:attr:`Views.malformed`, like any malformed message (not our envelope, a sender that is not
the topic's node, a body that is not a status or telemetry record). Of a node's messages, the
one with the highest message id wins (ids only grow, across restarts too); the sender's clock
decides nothing. Without public keys nothing can be verified, and the output says so.

Nodes publish telemetry every ``metrics.telemetry_interval_s``; if that is longer than
``wait_s`` and the node does not retain its telemetry, only its status is shown.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import os
import secrets
import ssl
import sys
import time
from collections.abc import Mapping
from typing import Any

import aiomqtt

from qnode.daemon.bus.client import suback_code
from qnode.daemon.bus.envelope import MessageRejected, decode
from qnode.daemon.bus.identity import TrustStore
from qnode.daemon.bus.telemetry import Telemetry, validate
from qnode.daemon.bus.topics import VERSION_SEGMENT, Topics, parse_topic
from qnode.daemon.tools.liveview import (
    MISSING,
    fmt_count,
    fmt_duration,
    fmt_fill,
    fmt_si,
    link_table,
    mapping,
    num,
    record_age_s,
    roles_text,
)

#: Telemetry states that say more than the status' ``online``.
_NOTABLE_TELEMETRY_STATES = frozenset({"starting", "degraded", "stopping"})


class BrokerUnreachable(ConnectionError):
    """The MQTT broker could not be reached (or refused us); the message says where and why."""


@dataclasses.dataclass
class NodeView:
    """What was heard from one node. Times are wall clock, s since the epoch."""

    node: str
    status: dict[str, Any] | None = None    # body of the latest status message
    status_ts: float | None = None          # its envelope timestamp (sender's clock)
    status_id: int = -1                     # its message id (the newest wins)
    telemetry_id: int = -1                  # the telemetry record's message id
    telemetry: Telemetry | None = None      # the newest telemetry record
    received_at: float | None = None        # when we received that record (our clock)
    messages: int = 0                       # accepted messages

    @property
    def status_state(self) -> str | None:
        state = (self.status or {}).get("state")
        return state if isinstance(state, str) else None

    @property
    def telemetry_state(self) -> str | None:
        state = (self.telemetry or {}).get("state")
        return state if isinstance(state, str) else None

    @property
    def state(self) -> str:
        """``offline`` if the status says so, else a notable telemetry state (``degraded``,
        ``starting``, ``stopping``), else the status' state (``online``), else the telemetry's,
        else ``unknown``."""
        if self.status_state == "offline":
            return "offline"
        if self.telemetry_state in _NOTABLE_TELEMETRY_STATES:
            return str(self.telemetry_state)
        return self.status_state or self.telemetry_state or "unknown"

    @property
    def roles(self) -> list[str]:
        for source in (self.telemetry, self.status):
            roles = (source or {}).get("roles")
            if isinstance(roles, list):
                return [str(r) for r in roles]
        return []

    def telemetry_age_s(self, now: float) -> float | None:
        """Seconds since the node built its last record (its clock), else since we got it."""
        if self.telemetry is None:
            return None
        age = record_age_s(self.telemetry, now)
        if age is None and self.received_at is not None:
            age = now - self.received_at
        return age

    def to_json(self, now: float) -> dict[str, Any]:
        return {"node": self.node, "state": self.state, "roles": self.roles,
                "status": self.status, "telemetry": self.telemetry,
                "telemetry_age_s": self.telemetry_age_s(now), "messages": self.messages}


class Views(dict[str, NodeView]):
    """The nodes heard (by node id), plus what could not be used."""

    def __init__(self, network: str = "", trust: TrustStore | None = None):
        super().__init__()
        self.network = network
        #: the network's public identity keys; None: nothing is verified
        self.trust = trust
        self.malformed: collections.Counter[str] = collections.Counter()  # reason -> count
        self.examples: dict[str, str] = {}  # reason -> the first such message's problem

    def reject(self, reason: str, detail: str) -> None:
        self.malformed[reason] += 1
        self.examples.setdefault(reason, detail[:200])

    def add(self, topic_str: str, payload: object, received_at: float | None = None) -> None:
        """Take one MQTT message; never raises for bad input (counts it instead)."""
        if not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        try:
            topic = parse_topic(topic_str)
        except ValueError as exc:
            self.reject("bad_topic", str(exc))
            return
        if topic.kind not in ("status", "telemetry"):
            self.reject("bad_topic", f"unexpected topic {topic_str}")
            return
        try:
            msg = decode(bytes(payload), topic, trust=self.trust,
                         require_node_signature=self.trust is not None)
        except MessageRejected as exc:
            self.reject(exc.reason, str(exc))
            return
        body = dict(msg.body)
        if topic.kind == "status":
            if not isinstance(body.get("state"), str):
                self.reject("bad_status", f"status of {msg.sender} has no 'state' (str)")
                return
            view = self.setdefault(msg.sender, NodeView(msg.sender))
            if msg.id >= view.status_id:
                view.status, view.status_ts, view.status_id = body, msg.ts, msg.id
        else:
            try:
                record = validate(body)
            except ValueError as exc:
                self.reject("bad_telemetry", f"{msg.sender}: {exc}")
                return
            if record["node"] != msg.sender:
                self.reject("sender_mismatch", f"telemetry of {record['node']!r} published by "
                                               f"{msg.sender!r}")
                return
            view = self.setdefault(msg.sender, NodeView(msg.sender))
            if msg.id >= view.telemetry_id:
                view.telemetry, view.telemetry_id = record, msg.id
                view.received_at = time.time() if received_at is None else received_at
        view.messages += 1


def topic_filters(network: str, node: str | None = None) -> list[str]:
    """The status and telemetry topics of every node of ``network`` (or of ``node``)."""
    if node is not None:
        t = Topics(network, node)
        return [t.status, t.telemetry]
    Topics(network, "x")  # checks the network name
    base = f"qnet/{VERSION_SEGMENT}/{network}/+"
    return [f"{base}/status", f"{base}/telemetry"]


async def collect(host: str, port: int, network: str, *, wait_s: float = 3.0,
                  tls: ssl.SSLContext | None = None, username: str | None = None,
                  password: str | None = None, node: str | None = None,
                  connect_timeout_s: float = 10.0, trust: TrustStore | None = None) -> Views:
    """Listen to ``network``'s status and telemetry for ``wait_s`` seconds (``node``: only
    that node; ``trust``: show only what its nodes signed). :class:`BrokerUnreachable` if the
    broker cannot be reached or refuses us."""
    views = Views(network, trust)
    filters = topic_filters(network, node)
    client = aiomqtt.Client(host, port, identifier=f"qnode-status-{secrets.token_hex(6)}",
                            clean_session=True, tls_context=tls, username=username,
                            password=password, timeout=connect_timeout_s)

    async def listen() -> None:
        async for message in client.messages:
            views.add(str(message.topic), message.payload)

    try:
        async with client:
            codes = await client.subscribe([(f, 1) for f in filters])
            if all(suback_code(c) >= 0x80 for c in codes):
                raise BrokerUnreachable(f"the broker at {host}:{port} refused the "
                                        f"subscriptions {filters} (ACL?)")
            try:
                async with asyncio.timeout(wait_s):
                    await listen()
            except TimeoutError:
                pass
    except aiomqtt.MqttError as exc:
        raise BrokerUnreachable(f"cannot reach the MQTT broker at {host}:{port}: {exc}") from exc
    return views


# -- output -----------------------------------------------------------------------------------

def _instruments_text(instruments: object) -> str:
    parts = []
    for name, health in sorted(mapping(instruments).items()):
        health = mapping(health)
        kind = health.get("kind")
        errors = num(health.get("errors_total"))
        part = f"{name}" + (f" ({kind})" if isinstance(kind, str) else "")
        part += f" {health.get('state', MISSING)}"
        if errors:
            part += f", {fmt_count(errors)} errors"
        parts.append(part)
    return " · ".join(parts)


def _node_figures(rec: Mapping[str, Any]) -> str:
    ingest = num(rec.get("ingest_mtags_s"))
    parts = [f"up {fmt_duration(rec.get('uptime_s'))}"]
    if ingest is not None:
        parts.append(f"ingest {fmt_si(ingest * 1e6, 't/s')}")
    if "dropped_chunks_total" in rec or "dropped_tags_total" in rec:
        parts.append(f"dropped {fmt_count(rec.get('dropped_chunks_total'))} chunks / "
                     f"{fmt_count(rec.get('dropped_tags_total'))} tags")
    if "memory_used" in rec:
        parts.append(f"memory {fmt_fill(rec.get('memory_used'), rec.get('memory_capacity'))}")
    if "source_brightness_hz" in rec:
        parts.append(f"source {fmt_si(rec.get('source_brightness_hz'), 'Hz')}")
    restarts = num(rec.get("role_restarts_total"))
    if restarts:
        parts.append(f"{fmt_count(restarts)} role restarts")
    return " · ".join(parts)


def _singles(rec: Mapping[str, Any]) -> str:
    return " · ".join(f"ch {ch}: {fmt_si(v, 'Hz')}"
                      for ch, v in sorted(mapping(rec.get("singles_hz")).items()))


def _joined(nodes: object) -> str:
    """A route's nodes as ``a>b>c``."""
    return ">".join(str(n) for n in nodes) if isinstance(nodes, list) else MISSING


def _routes(rec: Mapping[str, Any]) -> list[str]:
    """The node's routes (telemetry ``routing``): one line per destination."""
    routing = mapping(rec.get("routing"))
    lines = []
    for dst, route in sorted(mapping(routing.get("routes")).items()):
        route = mapping(route)
        if "error" in route:
            lines.append(f"  route        to {dst}: none ({str(route['error'])[:120]})")
            continue
        f, rate = num(route.get("fidelity")), route.get("rate_hz")
        lines.append(f"  route        to {dst}: {_joined(route.get('nodes'))} (predicted F "
                     f"{MISSING if f is None else f'{f:.3f}'}, {fmt_si(rate, 'Hz')}, "
                     f"{fmt_count(route.get('candidates'))} candidates)")
    routed = mapping(routing.get("routed"))
    for pid, found in sorted(mapping(routed.get("paths")).items()):
        path = mapping(found)
        lines.append(f"  routed path  {pid}: {_joined(path.get('nodes'))} "
                     f"({path.get('state', MISSING)}, installed by "
                     f"{path.get('installer', MISSING)})")
    if num(routed.get("rerouted_total")):
        last = mapping(routed.get("last_reroute"))
        lines.append(f"  re-routes    {fmt_count(routed.get('rerouted_total'))}, the last: "
                     f"{str(last.get('reason', MISSING))[:120]}")
    changes = num(routing.get("route_changes_total"))
    if routing:
        lines.append(f"  routing      {fmt_count(routing.get('nodes_known'))} nodes, "
                     f"{fmt_count(routing.get('links_known'))} links known · "
                     f"{fmt_count(changes)} route changes")
    return lines


def format_node(view: NodeView, now: float) -> list[str]:
    """One node's block."""
    head = f"{view.node}  {view.state.upper()}"
    detail = []
    if view.status_state and view.status_state != view.state:
        detail.append(f"status {view.status_state}")
    if view.telemetry_state and view.telemetry_state != view.state:
        detail.append(f"node {view.telemetry_state}")
    age = view.telemetry_age_s(now)
    detail.append("no telemetry heard" if age is None else f"telemetry {fmt_duration(age)} old")
    lines = [f"{head}  ({', '.join(detail)})"]
    extra = {k: v for k, v in (view.status or {}).items() if k not in ("state", "roles")}
    if view.roles:
        lines.append(f"  roles        {roles_text(view.roles)}")
    if extra:
        lines.append("  status       " + " · ".join(f"{k} {json.dumps(v)}"
                                                   for k, v in sorted(extra.items())))
    rec = view.telemetry
    if rec is not None:
        if mapping(rec.get("instruments")):
            lines.append(f"  instruments  {_instruments_text(rec.get('instruments'))}")
        lines.append(f"  figures      {_node_figures(rec)}")
        if _singles(rec):
            lines.append(f"  singles      {_singles(rec)}")
        lines.extend(link_table(rec.get("links")))
        lines.extend(_routes(rec))
    return lines


def format_status(views: Mapping[str, NodeView], now: float | None = None) -> str:
    """One block per node, after a header line with the counts (``now``: wall clock, s)."""
    now = time.time() if now is None else now
    states = collections.Counter(v.state for v in views.values())
    network = getattr(views, "network", "")
    head = (f"network {network}: " if network else "") + (
        f"{len(views)} node{'s' if len(views) != 1 else ''}"
        + (" (" + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")"
           if states else ""))
    malformed = views.malformed if isinstance(views, Views) else collections.Counter[str]()
    if malformed:
        total = sum(malformed.values())
        head += (f"; {total} message{'s' if total != 1 else ''} ignored ("
                 + ", ".join(f"{r} {n}" for r, n in sorted(malformed.items())) + ")")
    if getattr(views, "trust", None) is None:
        head += "\nUNVERIFIED: no public keys given (--trust DIR): anyone could have sent these"
    blocks = [head] + ["\n".join(format_node(views[n], now)) for n in sorted(views)]
    return "\n\n".join(blocks)


# -- command line -----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``qnode status`` (cli.py: ``add_arguments(sub.add_parser("status"))``,
    ``set_defaults(func=status.main)``)."""
    parser.add_argument("--config", help="take broker, TLS files and network from this node "
                                         "config (TOML)")
    parser.add_argument("--broker", help="mqtt://host[:port] or mqtts://host[:port] "
                                         "(default mqtt://localhost:1883)")
    parser.add_argument("--network", help="the network's name (topics qnet/v1/<network>/...)")
    parser.add_argument("--node", help="show only this node")
    parser.add_argument("--wait", type=float, default=3.0, metavar="S",
                        help="listen this many seconds (default 3)")
    parser.add_argument("--ca-file", help="mqtts: the CA certificate")
    parser.add_argument("--client-cert", help="mqtts: client certificate")
    parser.add_argument("--client-key", help="mqtts: client key")
    parser.add_argument("--username", help="MQTT user name (password from $QNODE_MQTT_PASSWORD)")
    parser.add_argument("--trust", metavar="DIR", help="the network's public identity keys "
                                                        "(<node>.pub); default: --config's "
                                                        "trust_dir. Only what they verify is "
                                                        "shown")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


@dataclasses.dataclass(frozen=True)
class _Target:
    host: str
    port: int
    network: str
    tls: ssl.SSLContext | None
    trust: TrustStore | None = None


def _tls_context(ca_file: Any, cert: Any, key: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def _target(args: argparse.Namespace) -> _Target:
    """Where to listen, from the options (and the node config, if given); ValueError if
    something is missing or wrong."""
    from urllib.parse import urlsplit

    def get(name: str) -> Any:  # the caller's Namespace may lack some options
        return getattr(args, name, None)

    host, port, tls_on, network = "localhost", 1883, False, get("network")
    ca, cert, key = get("ca_file"), get("client_cert"), get("client_key")
    trust_dir = get("trust")
    if get("config"):
        from qnode.daemon.runtime.config import load_config
        cfg = load_config(get("config"))
        host, port, tls_on = cfg.broker.host, cfg.broker.port, cfg.broker.tls
        network = network or cfg.network
        ca, cert, key = (ca or cfg.broker.ca_file, cert or cfg.broker.client_cert,
                         key or cfg.broker.client_key)
        trust_dir = trust_dir or cfg.trust_dir
    if get("broker"):
        url = urlsplit(get("broker"))
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
            raise ValueError(f"--broker {get('broker')!r}: expected mqtt://host[:port] or "
                             f"mqtts://host[:port]")
        tls_on = url.scheme == "mqtts"
        host, port = url.hostname, url.port or (8883 if tls_on else 1883)
    if not network:
        raise ValueError("which network? give --network or --config")
    tls_on = tls_on or bool(ca or cert)
    trust = TrustStore.from_dir(trust_dir) if trust_dir else None  # IdentityError: ValueError
    return _Target(host, port, network, _tls_context(ca, cert, key) if tls_on else None, trust)


def main(args: argparse.Namespace) -> int:
    """``qnode status``: 0 if at least one node was heard, 2 if none, 1 if the broker could
    not be reached (or the options are wrong)."""
    try:
        target = _target(args)
    except (ValueError, OSError) as exc:
        print(f"qnode status: {exc}", file=sys.stderr)
        return 1
    node = getattr(args, "node", None)
    wait_s = getattr(args, "wait", None)
    try:
        views = asyncio.run(collect(
            target.host, target.port, target.network, wait_s=3.0 if wait_s is None else wait_s,
            tls=target.tls, username=getattr(args, "username", None),
            password=os.environ.get("QNODE_MQTT_PASSWORD"), node=node, trust=target.trust))
    except BrokerUnreachable as exc:
        print(f"qnode status: {exc}", file=sys.stderr)
        return 1
    now = time.time()
    if getattr(args, "json", False):
        print(json.dumps({"network": target.network,
                          "nodes": {n: v.to_json(now) for n, v in sorted(views.items())},
                          "malformed": dict(views.malformed),
                          "verified": views.trust is not None}, indent=2, default=str))
    else:
        print(format_status(views, now))
    if not views:
        print(f"qnode status: nothing heard from {f'node {node}' if node else 'any node'} of "
              f"network {target.network!r} on {target.host}:{target.port} within "
              f"{wait_s or 3.0:g} s", file=sys.stderr)
        return 2
    return 0
