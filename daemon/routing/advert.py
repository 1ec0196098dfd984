"""TOPO: a node's advertisement of its K links' measured state, for routing.

Every memory node publishes one, retained and signed with its identity key, on
``qnet/v1/<network>/<node>/topo`` (docs/integrators/mqtt-contract.md): per link the peer, the
test-pair fidelity estimate and its standard error, the rate of pairs bound at both ends, the
storage qubits free now, and the link's state. A node only speaks for its own end of a link;
:class:`~qnode.daemon.routing.graph.TopologyView` joins two ends' adverts into one edge.

The body is hostile input at every receiver: :meth:`TopologyAdvert.from_dict` checks every
field and bounds every list.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from qnode.daemon.linklayer.fields import bad, check_choice, check_float, check_int, check_name

#: a link's state as its end sees it: ``up`` (heralds arrive and the estimate is from test
#: pairs), ``degraded`` (heralds arrive, but the estimate is still the configured prior, or the
#: ends have not agreed on the station's epoch), ``down`` (no herald batch, not even the
#: station's heartbeat, for ``DOWN_AFTER_S``)
LINK_STATES = ("up", "degraded", "down")
#: a link is down after this long without a herald batch (s): three of a station's 1 s
#: heartbeats (qnode.daemon.roles.station.HEARTBEAT_S)
DOWN_AFTER_S = 3.0
#: links one advert may list
MAX_LINKS = 64
#: the largest pair rate an advert may state (Hz): far above any link's attempt rate
MAX_RATE_HZ = 1e9
#: the longest time-to-live an advert may ask for (s)
MAX_TTL_S = 3600.0


@dataclass(frozen=True)
class LinkAdvert:
    """One K link at the advertising end.

    ``fidelity``: the link's estimate of its new pairs' fidelity (0..1; from test pairs when
    ``state`` is up, else the configured prior); ``sigma``: its standard error (None while it is
    the prior); ``rate_hz``: pairs bound at both ends per second over the last advert interval
    (pairs a path can use); ``free_qubits``/``qubits``: storage qubits free now / in all."""

    link: str
    peer: str
    state: str
    fidelity: float
    sigma: float | None
    rate_hz: float
    free_qubits: int
    qubits: int

    def __post_init__(self) -> None:
        c = "LinkAdvert"
        check_name(c, "link", self.link)    # both end up in PATH messages and topics
        check_name(c, "peer", self.peer)
        check_choice(c, "state", self.state, LINK_STATES)
        check_float(c, "fidelity", self.fidelity, 0.0, 1.0)
        if self.sigma is not None:
            check_float(c, "sigma", self.sigma, 0.0, 1.0)
        check_float(c, "rate_hz", self.rate_hz, 0.0, MAX_RATE_HZ)
        check_int(c, "qubits", self.qubits, 0, 1 << 20)
        check_int(c, "free_qubits", self.free_qubits, 0, self.qubits)

    def to_dict(self) -> dict[str, Any]:
        return {"link": self.link, "peer": self.peer, "state": self.state,
                "fidelity": round(self.fidelity, 6),
                "sigma": None if self.sigma is None else round(self.sigma, 6),
                "rate_hz": round(self.rate_hz, 3), "free_qubits": self.free_qubits,
                "qubits": self.qubits}

    @classmethod
    def from_dict(cls, d: Any) -> LinkAdvert:
        if not isinstance(d, Mapping):
            raise bad("LinkAdvert", "", "an object", type(d).__name__)
        keys = {"link", "peer", "state", "fidelity", "sigma", "rate_hz", "free_qubits",
                "qubits"}
        if set(d) != keys:
            raise bad("LinkAdvert", "", f"exactly the fields {sorted(keys)}", sorted(d)[:12])
        return cls(**{k: d[k] for k in keys})


@dataclass(frozen=True)
class TopologyAdvert:
    """TOPO (a node → everyone, retained): the sender's K links at Unix time ``time`` (s),
    valid for ``ttl_s`` (s) after it — a receiver forgets an advert older than that, so a
    node that stopped advertising drops out of the graph. A receiver keeps the newest advert of
    each node by ``time``; an older or equal one (a retained copy delivered again) changes
    nothing."""

    TYPE: ClassVar[str] = "TOPO"
    time: float
    ttl_s: float
    links: tuple[LinkAdvert, ...]

    def __post_init__(self) -> None:
        c = "TopologyAdvert"
        check_float(c, "time", self.time, 0.0)
        check_float(c, "ttl_s", self.ttl_s, 0.1, MAX_TTL_S)
        if isinstance(self.links, list):
            object.__setattr__(self, "links", tuple(self.links))
        if not isinstance(self.links, tuple) or len(self.links) > MAX_LINKS:
            raise bad(c, "links", f"a list of at most {MAX_LINKS} links", type(self.links))
        if len({a.link for a in self.links}) != len(self.links):
            raise bad(c, "links", "each link once", [a.link for a in self.links])

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "ttl_s": self.ttl_s,
                "links": [a.to_dict() for a in self.links]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TopologyAdvert:
        c = "TopologyAdvert"
        if set(d) != {"time", "ttl_s", "links"}:
            raise bad(c, "", "exactly the fields ['links', 'time', 'ttl_s']", sorted(d)[:12])
        links = d["links"]
        if not isinstance(links, list) or len(links) > MAX_LINKS:
            raise bad(c, "links", f"a list of at most {MAX_LINKS} links", type(links).__name__)
        return cls(d["time"], d["ttl_s"], tuple(LinkAdvert.from_dict(a) for a in links))

    def expires_at(self) -> float:
        return self.time + self.ttl_s


def link_state(herald_age_s: float | None, from_tests: bool, epoch_agreed: bool) -> str:
    """The advertised state of a link end (:data:`LINK_STATES`) from the time since its last
    herald batch (s; None: none yet), whether its estimate comes from test pairs, and whether
    the ends agree on the station's epoch."""
    if herald_age_s is None or not math.isfinite(herald_age_s) or herald_age_s > DOWN_AFTER_S:
        return "down"
    return "up" if from_tests and epoch_agreed else "degraded"


__all__ = ["DOWN_AFTER_S", "LINK_STATES", "LinkAdvert", "TopologyAdvert", "link_state"]
