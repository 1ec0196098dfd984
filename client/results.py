"""What a node tells an application, as typed values: :class:`Pair`, :class:`Acceptance` and
:class:`Outcome`, and the errors a request or a listener ends with.

Units: fidelities are dimensionless in [0, 1]; ``hold_ms`` is in milliseconds; ``received_at``
is this process's monotonic clock (:func:`time.monotonic`, s), so a pair's hold can be counted
down without trusting the node's wall clock.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal

#: how a request ended: DONE, ERROR, EXPIRED, CANCELLED
Status = Literal["done", "error", "expired", "cancelled"]


@dataclass(frozen=True)
class Pair:
    """One entangled pair, this end's half.

    ``pool`` and ``pair_id`` name the pair at both ends (the far end's application gets the
    same two); ``bell_state`` is one of ``phi+``, ``phi-``, ``psi+``, ``psi-`` in the pool's
    frame; ``fidelity`` (dimensionless, 0–1) is the node's estimate to that state at delivery.
    ``kind`` ``keep``: ``qubit`` is the node's QDevice qubit holding this half, the
    application's for ``hold_ms`` (ms) from delivery. ``kind`` ``measure``: ``basis`` and
    ``outcome`` instead. ``request_id`` and ``index`` (1 = the request's first pair) are set
    for a pair of one's own request; ``remote_application`` for a pair received as a listener
    (the far end's requester). ``received_at``: when this process read it (monotonic, s)."""

    pool: str
    pair_id: int
    remote: str
    purpose: int
    bell_state: str
    fidelity: float
    kind: str
    qubit: int | None = None
    hold_ms: int | None = None
    request_id: str | None = None
    index: int | None = None
    remote_application: str | None = None
    basis: str | None = None
    outcome: int | None = None
    received_at: float = dataclasses.field(default_factory=time.monotonic, compare=False)

    @property
    def hold_s(self) -> float | None:
        """How long the qubit is the application's from delivery (s); None: no bound given."""
        return None if self.hold_ms is None else self.hold_ms / 1000.0

    def hold_left_s(self, now: float | None = None) -> float | None:
        """Seconds of the hold left at monotonic time ``now`` (default: now), counted from
        :attr:`received_at` (so a little more than the node's: the message's transit is not
        subtracted); None when the node gave no hold."""
        if self.hold_ms is None:
            return None
        now = time.monotonic() if now is None else now
        return self.received_at + self.hold_ms / 1000.0 - now

    def to_dict(self) -> dict[str, Any]:
        """The pair as a JSON object: every field but :attr:`received_at`, None ones left
        out."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "received_at" and getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Acceptance:
    """The node accepted a request: ``queued`` requests (of all applications, this one
    included) wait at it; ``fidelity_estimate`` (0–1) is what the pool's fresh pairs have now
    (None: not known yet)."""

    request_id: str
    queued: int
    fidelity_estimate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Outcome:
    """How a request ended (its one terminal reply): ``status``, the ``pairs`` delivered, and
    for ``error`` the node's ``code`` (for programs) and ``reason`` (for people);
    ``fidelity_estimate`` (0–1) with ``fidelity_unreachable``."""

    request_id: str
    status: Status
    pairs: int
    code: str | None = None
    reason: str | None = None
    fidelity_estimate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


class ClientError(Exception):
    """Something ended a request or a listener: ``code`` for programs, ``reason`` for people.
    Subclasses say who decided: :class:`RequestError` the node; :class:`NoReply` and
    :class:`ConnectionLost` this client."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason


class RequestError(ClientError):
    """The node ended a request (or refused a LISTEN) with ``ERROR``: ``code`` is one of the
    protocol's error codes (``unknown_remote``, ``no_listener``, ``unsupported``, ...),
    ``pairs`` how many pairs the request had received, ``request_id`` None for a LISTEN.
    :class:`RequestExpired` and :class:`RequestCancelled` are the two other terminal replies
    that end a request without all its pairs."""

    def __init__(self, code: str, reason: str, *, pairs: int = 0,
                 request_id: str | None = None, fidelity_estimate: float | None = None):
        super().__init__(code, reason)
        self.pairs, self.request_id = pairs, request_id
        self.fidelity_estimate = fidelity_estimate

    @property
    def outcome(self) -> Outcome:
        """The terminal reply as an :class:`Outcome`."""
        status: Status = ("expired" if isinstance(self, RequestExpired) else "cancelled"
                          if isinstance(self, RequestCancelled) else "error")
        return Outcome(self.request_id or "", status, self.pairs,
                       None if status != "error" else self.code,
                       None if status != "error" else self.reason, self.fidelity_estimate)


class RequestExpired(RequestError):
    """``EXPIRED``: the request's ``timeout_s`` passed before all its pairs came (``code``
    ``expired``)."""


class RequestCancelled(RequestError):
    """``CANCELLED`` that this iterator did not ask for (another connection of the same
    application cancelled the request; ``code`` ``cancelled``). A CANCEL sent by leaving the
    iterator ends it quietly."""


class NoReply(ClientError):
    """The node did not answer in time (``code`` ``no_reply``): nothing within the client's
    ``reply_timeout_s`` of a request or LISTEN, or no terminal reply by the request's deadline
    plus that. The node may be down; a CANCEL was sent."""

    def __init__(self, reason: str):
        super().__init__("no_reply", reason)


class ConnectionLost(ClientError):
    """The connection to the broker ended (``code`` ``connection_lost``); the client does not
    reconnect, and replies sent meanwhile are lost: open a new client."""

    def __init__(self, reason: str):
        super().__init__("connection_lost", reason)
