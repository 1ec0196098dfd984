"""The MQTT topic tree (docs/integrators/mqtt-contract.md): everything a node publishes lives
under its own prefix.

``qnet/v1/<network>/<node>/`` then one of:

==================  ==========================================================  =========
``status``          the node's state (retained; the last will says ``offline``)  node
``telemetry``       periodic metrics                                             node
``topo``            the node's measured links, for routing (retained, signed)    node
``cmd``             requests to the node                                         anyone
``reply/<who>``     the node's replies to requester ``who``                       node
``herald/<link>``   a herald station's per-chunk batch of successes on a link    station
``ll/<peer>``       link-layer messages from the node to ``peer``                node
``proto/<peer>``    purification / swap messages from the node to ``peer``       node
``tags/<link>``     the node's time tags for the counter of M-type ``link``       node
``key/<link>``      key post-processing of M-type ``link`` (sifting, blocks)      node
``svc/<peer>``      the application service's messages to ``peer``               node
``req/<node>``      an application's requests to ``node``                        application
``app/<app>``       the node's replies to application ``app``                    node
==================  ==========================================================  =========

The node segment of a topic names its publisher (the broker's ACL lets a node publish only under
its own prefix, and an application only its requests), so a message's ``sender`` must equal it.
An application's name is a node segment like a node's: ``req`` topics live under the
application's own prefix, ``qnet/v1/<network>/<application>/req/<node>``, and so do its classical
messages to another application, ``qnet/v1/<network>/<application>/to/<other application>``.
"""
from __future__ import annotations

import dataclasses
import re

VERSION_SEGMENT = "v1"
NODE_KINDS = ("status", "telemetry", "topo", "cmd")
ARG_KINDS = ("reply", "herald", "ll", "proto", "tags", "key", "svc", "req", "app", "to")
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclasses.dataclass(frozen=True)
class Topic:
    """A parsed topic: ``node`` published it (or, for ``cmd``, is addressed by it)."""

    network: str
    node: str
    kind: str
    arg: str | None = None

    def __str__(self) -> str:
        tail = self.kind if self.arg is None else f"{self.kind}/{self.arg}"
        return f"qnet/{VERSION_SEGMENT}/{self.network}/{self.node}/{tail}"


def _check(name: str, value: str) -> str:
    if not _SEGMENT.match(value):
        raise ValueError(f"{name} {value!r} may use only letters, digits, '-' and '_' (1-64)")
    return value


@dataclasses.dataclass(frozen=True)
class Topics:
    """The topics of one node of a network."""

    network: str
    node: str

    def __post_init__(self) -> None:
        _check("network", self.network)
        _check("node", self.node)

    @property
    def root(self) -> str:
        return f"qnet/{VERSION_SEGMENT}/{self.network}/{self.node}"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def telemetry(self) -> str:
        return f"{self.root}/telemetry"

    @property
    def topo(self) -> str:
        """The node's topology advertisement (qnode.daemon.routing)."""
        return f"{self.root}/topo"

    @property
    def topo_all(self) -> str:
        """Every node's topology advertisement (a subscription filter)."""
        return f"qnet/{VERSION_SEGMENT}/{self.network}/+/topo"

    @property
    def cmd(self) -> str:
        return f"{self.root}/cmd"

    def reply(self, requester: str) -> str:
        return f"{self.root}/reply/{_check('requester', requester)}"

    def herald(self, link: str) -> str:
        return f"{self.root}/herald/{_check('link', link)}"

    def tags(self, link: str) -> str:
        return f"{self.root}/tags/{_check('link', link)}"

    def key(self, link: str) -> str:
        """Key post-processing messages of M link ``link`` to its other end."""
        return f"{self.root}/key/{_check('link', link)}"

    def app(self, application: str) -> str:
        """Where this node replies to ``application``."""
        return f"{self.root}/app/{_check('application', application)}"

    def requests_to(self, node: str) -> str:
        """Where this publisher (an application) sends its requests to ``node``."""
        return f"{self.root}/req/{_check('node', node)}"

    def to(self, application: str) -> str:
        """Where this publisher (an application) sends ``DATA`` to ``application``."""
        return f"{self.root}/to/{_check('application', application)}"

    def svc(self, peer: str) -> str:
        """The application service's messages to ``peer``, the other end of a pool."""
        return f"{self.root}/svc/{_check('peer', peer)}"

    def ll(self, peer: str) -> str:
        return f"{self.root}/ll/{_check('peer', peer)}"

    def proto(self, peer: str) -> str:
        return f"{self.root}/proto/{_check('peer', peer)}"

    def subscriptions(self, heralds: dict[str, str] | None = None) -> list[str]:
        """What this node subscribes to: link-layer and protocol messages addressed to it from
        any node, its own command topic, and the herald topic of each of its K-type links
        (``heralds``: link id -> herald station node)."""
        base = f"qnet/{VERSION_SEGMENT}/{self.network}"
        subs = [f"{base}/+/ll/{self.node}", f"{base}/+/proto/{self.node}", self.cmd]
        for link, station in sorted((heralds or {}).items()):
            subs.append(f"{base}/{_check('station', station)}/herald/{_check('link', link)}")
        return subs


def parse_topic(topic: str) -> Topic:
    """Split a qnode topic; ValueError naming what is wrong for anything else."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "qnet" or parts[1] != VERSION_SEGMENT:
        raise ValueError(f"topic {topic!r} is not qnet/{VERSION_SEGMENT}/<network>/<node>/<kind>")
    network, node, kind, rest = parts[2], parts[3], parts[4], parts[5:]
    _check("network", network)
    _check("node", node)
    if kind in NODE_KINDS and not rest:
        return Topic(network, node, kind)
    if kind in ARG_KINDS and len(rest) == 1:
        return Topic(network, node, kind, _check(kind, rest[0]))
    raise ValueError(f"topic {topic!r}: unknown kind {'/'.join(parts[4:])!r}")
