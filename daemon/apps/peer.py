"""What the two ends of a pool say to each other to serve applications (decision record 0008
in ``docs/``): the allocator (the end whose node id sorts first) gives each pair to one
request and tells the other end.

They travel on ``svc/<peer>``, signed with the sender's identity key (the two ends of a path
share no link key), and each names its ``link``: the pool, a link or path id:

- ``LISTENERS``: the purpose ids this end's applications listen on (sent on every change and
  every few seconds: the latest replaces what came before);
- ``SERVE``: a request that arrived at the other end, for the allocator's queue;
- ``WITHDRAW``: the other end's request ended there (deadline, CANCEL): drop it;
- ``GIVE``: the allocator gave pair ``seq`` to a request (stored before it is sent); the other
  end takes the pair out of its inventory and tells its application;
- ``SERVE_END``: the allocator ended the other end's request (done, or refused with a code);
- ``HOLDS``: the path pairs the other end now holds (the repeater told each end in its own
  SWAP_RES; the allocator gives only pairs both ends hold, as a link's HELD does for its pairs).

Pure: no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qnode.daemon.apps.protocol import (
    NAME_PATTERN,
    PRIORITIES,
    REQUEST_ID_PATTERN,
    AppMessage,
    ErrorCode,
    spec,
)


class PeerMessage(AppMessage):
    """A message between the two ends of a pool (on ``svc/<peer>``)."""

    DIRECTION: ClassVar[str] = "peer"
    link: str   # the pool: a link or path id (each subclass declares the field)


_LINK = {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,64}$"}
_NAME = {"type": "string", "pattern": NAME_PATTERN}
_REQUEST_ID = {"type": "string", "pattern": REQUEST_ID_PATTERN}
_PURPOSE = {"type": "integer", "minimum": 0, "maximum": 0xFFFF}


@dataclass(frozen=True)
class Listeners(PeerMessage):
    """LISTENERS: the purposes this end's applications listen on, and which application."""

    TYPE: ClassVar[str] = "LISTENERS"
    link: str = spec(_LINK, "the pool (a link or path id)")
    purposes: dict[str, str] = spec(
        {"type": "object", "maxProperties": 1024,
         "propertyNames": {"pattern": r"^(0|[1-9][0-9]{0,4})$"},
         "additionalProperties": _NAME},
        "purpose id (as a decimal string) -> the application listening on it")


@dataclass(frozen=True)
class Serve(PeerMessage):
    """SERVE: the other end's application asks for pairs of this pool (for the allocator)."""

    TYPE: ClassVar[str] = "SERVE"
    link: str = spec(_LINK, "the pool (a link or path id)")
    application: str = spec(_NAME, "the requesting application (at the sender)")
    request_id: str = spec(_REQUEST_ID, "its request id")
    pairs: int = spec({"type": "integer", "minimum": 1, "maximum": 100_000}, "pairs asked for")
    purpose: int = spec(_PURPOSE, "the purpose id")
    min_fidelity: float = spec({"type": "number", "minimum": 0, "maximum": 1},
                               "the least fidelity at delivery")
    timeout_s: float = spec({"type": "number", "exclusiveMinimum": 0, "maximum": 86_400},
                            "time left to the request's deadline when sent", unit="s")
    priority: int = spec({"type": "integer", "minimum": 0, "maximum": PRIORITIES - 1},
                         "0 is served first")
    weight: float = spec({"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
                         "the application's weight at the sender (fair share)")
    kind: str = spec({"enum": ["keep", "measure"]}, "as requested", default="keep")


@dataclass(frozen=True)
class Withdraw(PeerMessage):
    """WITHDRAW: the sender's request ended there (deadline, CANCEL): stop serving it."""

    TYPE: ClassVar[str] = "WITHDRAW"
    link: str = spec(_LINK, "the pool (a link or path id)")
    application: str = spec(_NAME, "the requesting application")
    request_id: str = spec(_REQUEST_ID, "its request id")


@dataclass(frozen=True)
class Give(PeerMessage):
    """GIVE: the allocator gave pair ``seq`` of ``link`` to a request of ``origin``'s
    ``application``; the receiving end takes it and tells its application."""

    TYPE: ClassVar[str] = "GIVE"
    link: str = spec(_LINK, "the pool (a link or path id)")
    seq: int = spec({"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF},
                    "the pair's id in the pool: a link's sequence number, a path's pair id")
    origin: str = spec(_NAME, "the node where the request was made")
    application: str = spec(_NAME, "the requesting application")
    request_id: str = spec(_REQUEST_ID, "its request id")
    purpose: int = spec(_PURPOSE, "the purpose id")
    index: int = spec({"type": "integer", "minimum": 1}, "the pair's number in the request")
    last: bool = spec({"type": "boolean"}, "the request has all its pairs with this one")
    kind: str = spec({"enum": ["keep", "measure"]}, "as requested", default="keep")


@dataclass(frozen=True)
class ServeEnd(PeerMessage):
    """SERVE_END: the allocator refused or ended a request of the receiving end (``code``,
    ``reason``) after ``pairs`` pairs."""

    TYPE: ClassVar[str] = "SERVE_END"
    link: str = spec(_LINK, "the pool (a link or path id)")
    application: str = spec(_NAME, "the requesting application")
    request_id: str = spec(_REQUEST_ID, "its request id")
    code: str = spec({"enum": [c.value for c in ErrorCode]}, "why")
    reason: str = spec({"type": "string", "maxLength": 500}, "why, for a person")
    pairs: int = spec({"type": "integer", "minimum": 0}, "pairs given before the end")


@dataclass(frozen=True)
class Holds(PeerMessage):
    """HOLDS: end-to-end pairs of path ``link`` the sender received since its last HOLDS."""

    TYPE: ClassVar[str] = "HOLDS"
    link: str = spec(_LINK, "the pool (a path id)")
    pair_ids: list[int] = spec({"type": "array", "maxItems": 1024,
                                "items": {"type": "integer", "minimum": 0,
                                          "maximum": 0xFFFFFFFF}},
                               "the path's pair ids now held at the sender")


PEER_TYPES: dict[str, type[PeerMessage]] = {
    m.TYPE: m for m in (Listeners, Serve, Withdraw, Give, ServeEnd, Holds)}
