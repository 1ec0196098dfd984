"""The application protocol: what a program says to its node, and what the node answers.

A program (an *application*, named like a node: letters, digits, ``-`` and ``_``) publishes
requests to a node and reads the node's replies on its own topic (:mod:`qnode.daemon.bus.topics`:
``<application>/req/<node>`` and ``<node>/app/<application>``). Every message is a frozen
dataclass whose fields carry their JSON Schema — type, range, unit and a description — in the
field's metadata. That one description is the contract three ways: :meth:`AppMessage.from_dict`
validates input against it with ``jsonschema`` (a bad message is refused with the field's name and
what was wrong), :func:`message_schema` gives it to the AsyncAPI document, and the integrators'
reference in ``docs/`` is checked against it.

The life of a request (decision record 0008 in ``docs/``): the application chooses a
``request_id``; the node answers ``ACCEPTED`` or a terminal reply at once; each pair comes as a
``PAIR``; the request ends with exactly one terminal reply — ``DONE``, ``ERROR`` (``code`` and
``reason``), ``EXPIRED`` (its ``timeout_s`` passed) or ``CANCELLED``. An application that listens
on a purpose id (``LISTEN``) receives a ``PAIR`` for every pair the far end's application asked
for on that purpose, with the same pair id.

No I/O here: the module is pure and imported by the daemon and by client libraries alike.
"""
from __future__ import annotations

import dataclasses
import enum
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import jsonschema

#: names of applications and nodes (a topic segment)
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
#: an application's request id: chosen by it, echoed in every reply
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
#: the most pairs one request may ask for
MAX_PAIRS = 100_000
#: the longest deadline a request may give (s)
MAX_TIMEOUT_S = 86_400.0
PRIORITIES = 8           # 0 is served first
#: the most gates one OPERATE may carry
MAX_OPS = 64
#: the largest JSON object an application may send another (DATA ``data``), in bytes
MAX_DATA_BYTES = 16_384


class ErrorCode(enum.StrEnum):
    """Why a request ended in ``ERROR`` (the reply's ``code``; its ``reason`` says more)."""

    BAD_REQUEST = "bad_request"              # the message does not follow this protocol
    NOT_AUTHORISED = "not_authorised"        # not an application of this node, or its purpose
    DUPLICATE_REQUEST = "duplicate_request"  # the request id is in use by a live request
    UNKNOWN_REQUEST = "unknown_request"      # CANCEL of no live request
    UNKNOWN_REMOTE = "unknown_remote"        # no link or path from this node to that node
    UNSUPPORTED = "unsupported"              # e.g. measure-directly pairs over a path
    FIDELITY_UNREACHABLE = "fidelity_unreachable"  # above what the pool and purification give
    RATE_UNREACHABLE = "rate_unreachable"    # more pairs than the pool supplies before the deadline
    NO_LISTENER = "no_listener"              # nobody at the far end listens on the purpose
    QUEUE_FULL = "queue_full"                # the application's queue (or the node's) is full
    PAIRS_LOST = "pairs_lost"                # a delivered pair was expired before it was taken
    UNAVAILABLE = "unavailable"              # the node cannot serve now (link down, restarting)
    UNKNOWN_PAIR = "unknown_pair"            # OPERATE on a pair the application does not hold
    PHOTON_LOST = "photon_lost"              # OPERATE's receive: the photon did not arrive


def spec(schema: Mapping[str, Any], doc: str, *, default: Any = dataclasses.MISSING,
         unit: str | None = None) -> Any:
    """A dataclass field with its JSON Schema (``schema``), description (``doc``) and unit."""
    meta = {"schema": dict(schema), "doc": doc, "unit": unit}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class AppMessage:
    """Common ``to_dict`` / ``from_dict`` / schema of the application protocol's messages."""

    TYPE: ClassVar[str]
    #: "request" (application → node) or "reply" (node → application)
    DIRECTION: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this message, ``type`` included; None fields are left out."""
        out: dict[str, Any] = {"type": self.TYPE}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = v.value if isinstance(v, enum.Enum) else v
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Any:
        """Parse and validate ``d`` against the message's schema; ValueError naming the field
        and what is wrong."""
        errors = sorted(_validator(cls).iter_errors(d), key=lambda e: list(e.absolute_path))
        if errors:
            e = jsonschema.exceptions.best_match(errors)
            where = ".".join(str(p) for p in e.absolute_path)
            raise ValueError(f"{cls.TYPE}{'.' + where if where else ''}: {_short(e)}")
        kwargs = {k: v for k, v in d.items() if k != "type"}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            v = kwargs.get(f.name)
            if isinstance(v, float) and not math.isfinite(v):   # JSON Schema admits NaN
                raise ValueError(f"{cls.TYPE}.{f.name}: {v!r} is not a finite number")
            if isinstance(v, float) and "integer" in _types(f.metadata["schema"]):
                kwargs[f.name] = int(v)    # JSON Schema's integer admits 2.0; hold it as 2
        return cls(**kwargs)


def _short(e: jsonschema.ValidationError) -> str:
    """jsonschema's message, cut to 300 characters (it quotes the offending value)."""
    return e.message if len(e.message) <= 300 else e.message[:297] + "..."


def message_schema(cls: type[AppMessage]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of message class ``cls``: an object with ``type`` fixed to
    its TYPE, every field's schema with its description and unit, no other properties."""
    props: dict[str, Any] = {"type": {"const": cls.TYPE}}
    required = ["type"]
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        s = dict(f.metadata["schema"])
        doc = f.metadata["doc"]
        unit = f.metadata["unit"]
        s["description"] = f"{doc} ({unit})" if unit else doc
        if f.default is not dataclasses.MISSING and f.default is not None:
            s["default"] = f.default.value if isinstance(f.default, enum.Enum) else f.default
        props[f.name] = s
        if f.default is dataclasses.MISSING:
            required.append(f.name)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": cls.TYPE,
            "description": _describe(cls),
            "type": "object", "properties": props, "required": required,
            "additionalProperties": False}


def _types(schema: Mapping[str, Any]) -> list[str]:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _describe(cls: type[AppMessage]) -> str:
    """The first paragraph of the class docstring, on one line."""
    doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    return " ".join(doc.split())


_VALIDATORS: dict[str, jsonschema.Draft202012Validator] = {}


def _validator(cls: type[AppMessage]) -> jsonschema.Draft202012Validator:
    """The schema validator of ``cls``, made (and the schema checked) on first use."""
    v = _VALIDATORS.get(cls.TYPE)
    if v is None:
        schema = message_schema(cls)
        jsonschema.Draft202012Validator.check_schema(schema)
        v = _VALIDATORS[cls.TYPE] = jsonschema.Draft202012Validator(schema)
    return v


_REQUEST_ID = {"type": "string", "pattern": REQUEST_ID_PATTERN}
_NAME = {"type": "string", "pattern": NAME_PATTERN}
_PURPOSE = {"type": "integer", "minimum": 0, "maximum": 0xFFFF}
_COUNT = {"type": "integer", "minimum": 0}
_BELL = {"enum": ["phi+", "phi-", "psi+", "psi-"]}


# ------------------------------------------------------------------ application → node

@dataclass(frozen=True)
class Request(AppMessage):
    """REQUEST: ask for ``pairs`` entangled pairs with node ``remote``."""

    TYPE: ClassVar[str] = "REQUEST"
    DIRECTION: ClassVar[str] = "request"
    request_id: str = spec(_REQUEST_ID, "chosen by the application; echoed in every reply; "
                                        "unique among its live requests")
    remote: str = spec(_NAME, "the node at the other end of the pairs")
    pairs: int = spec({"type": "integer", "minimum": 1, "maximum": MAX_PAIRS},
                      "how many pairs")
    purpose: int = spec(_PURPOSE, "the purpose id: the far end's application listening on it "
                                  "receives the same pairs")
    min_fidelity: float = spec({"type": "number", "minimum": 0, "maximum": 1},
                               "the least fidelity to the stated Bell state a pair must have "
                               "when delivered", default=0.0)
    timeout_s: float = spec({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S},
                            "the request's deadline from its arrival; then EXPIRED",
                            default=10.0, unit="s")
    kind: str = spec({"enum": ["keep", "measure"]},
                     "keep: the pair stays in a qubit of each end for the application; "
                     "measure: both ends measure at once and report outcomes", default="keep")
    priority: int = spec({"type": "integer", "minimum": 0, "maximum": PRIORITIES - 1},
                         "0 is served first; within a priority, applications share by weight",
                         default=4)


@dataclass(frozen=True)
class Cancel(AppMessage):
    """CANCEL: end a live request; it ends in CANCELLED with the pairs it received."""

    TYPE: ClassVar[str] = "CANCEL"
    DIRECTION: ClassVar[str] = "request"
    request_id: str = spec(_REQUEST_ID, "the request to cancel")


@dataclass(frozen=True)
class Listen(AppMessage):
    """LISTEN: receive the pairs that the far end's applications request on ``purpose``
    (one listener per purpose per node; the node's config says which purposes an application
    may take)."""

    TYPE: ClassVar[str] = "LISTEN"
    DIRECTION: ClassVar[str] = "request"
    purpose: int = spec(_PURPOSE, "the purpose id to listen on")


@dataclass(frozen=True)
class Unlisten(AppMessage):
    """UNLISTEN: stop listening on ``purpose``."""

    TYPE: ClassVar[str] = "UNLISTEN"
    DIRECTION: ClassVar[str] = "request"
    purpose: int = spec(_PURPOSE, "the purpose id")


_QUBIT_REF = {"enum": ["pair", "aux"],
              "description": "pair: this end's half of the pair; aux: a scratch qubit of the "
                             "node, in |0> at its first use and freed when the OPERATE ends"}
_ANGLE = {"type": "number", "minimum": -4 * math.pi, "maximum": 4 * math.pi}
#: one gate of an OPERATE (QDEVICE/1 instructions in application terms)
GATE_SCHEMA: dict[str, Any] = {"oneOf": [
    {"type": "object", "description": "R_axis(angle) = exp(-i angle sigma_axis / 2)",
     "properties": {"gate": {"const": "rot"}, "qubit": _QUBIT_REF,
                    "axis": {"enum": ["X", "Y", "Z"]}, "angle_rad": _ANGLE},
     "required": ["gate", "qubit", "axis", "angle_rad"], "additionalProperties": False},
    {"type": "object", "description": "Hadamard, or a Pauli gate (up to a global phase)",
     "properties": {"gate": {"enum": ["h", "x", "y", "z"]}, "qubit": _QUBIT_REF},
     "required": ["gate", "qubit"], "additionalProperties": False},
    {"type": "object", "description": "CNOT (control and target differ)",
     "properties": {"gate": {"const": "cnot"}, "control": _QUBIT_REF, "target": _QUBIT_REF},
     "required": ["gate", "control", "target"], "additionalProperties": False},
    {"type": "object", "description": "measure in a basis (0 = the +1 eigenstate); a measured "
                                      "pair qubit is consumed, a measured aux is back in |0>",
     "properties": {"gate": {"const": "meas"}, "qubit": _QUBIT_REF,
                    "basis": {"enum": ["Z", "X", "Y"]}},
     "required": ["gate", "qubit", "basis"], "additionalProperties": False},
    {"type": "object", "description": "send the qubit's state to node 'to' over the quantum "
                                      "channel between them; RESULT.photons gets its photon "
                                      "number. A sent pair qubit is consumed, a sent aux is "
                                      "back in |0>",
     "properties": {"gate": {"const": "send"}, "qubit": _QUBIT_REF, "to": _NAME},
     "required": ["gate", "qubit", "to"], "additionalProperties": False},
    {"type": "object", "description": "load aux with photon 'photon' of the quantum channel "
                                      "from node 'from' (the first gate of its OPERATE; "
                                      "ERROR photon_lost, nothing done, if it did not arrive)",
     "properties": {"gate": {"const": "receive"}, "qubit": {"const": "aux"}, "from": _NAME,
                    "photon": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}},
     "required": ["gate", "qubit", "from", "photon"], "additionalProperties": False},
]}


@dataclass(frozen=True)
class Operate(AppMessage):
    """OPERATE: run gates on this end's half of a pair the node delivered to the application
    (a ``PAIR`` of kind keep, while its hold lasts), with one scratch qubit; answered by
    ``RESULT`` with the measurement outcomes, or ``ERROR``. A measurement of the pair's qubit,
    or ``release``, ends the application's hold of it."""

    TYPE: ClassVar[str] = "OPERATE"
    DIRECTION: ClassVar[str] = "request"
    request_id: str = spec(_REQUEST_ID, "chosen by the application; echoed in the reply")
    pool: str = spec(_NAME, "the pool of the pair (its PAIR's pool)")
    pair_id: int = spec({"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF},
                        "the pair (its PAIR's pair_id)")
    ops: list[dict[str, Any]] = spec({"type": "array", "items": GATE_SCHEMA, "minItems": 0,
                                      "maxItems": MAX_OPS},
                                     "the gates, run in order in one batch on the QDevice")
    release: bool = spec({"type": "boolean"}, "give the qubit back after the gates (a "
                                              "measured pair qubit is given back anyway)",
                         default=False)


@dataclass(frozen=True)
class Data(AppMessage):
    """DATA: a classical message from one application to another (e.g. a teleportation's two
    bits), on ``<sender>/to/<receiver>``; the network carries it and does not read it."""

    TYPE: ClassVar[str] = "DATA"
    DIRECTION: ClassVar[str] = "application"
    data: dict[str, Any] = spec({"type": "object"}, f"any JSON object (at most "
                                                    f"{MAX_DATA_BYTES} bytes)")


# ------------------------------------------------------------------ node → application

@dataclass(frozen=True)
class Accepted(AppMessage):
    """ACCEPTED: the request is queued; PAIRs follow, then one terminal reply."""

    TYPE: ClassVar[str] = "ACCEPTED"
    DIRECTION: ClassVar[str] = "reply"
    request_id: str = spec(_REQUEST_ID, "the request")
    queued: int = spec(_COUNT, "requests of all applications waiting at this node, this one "
                               "included")
    fidelity_estimate: float | None = spec({"type": ["number", "null"], "minimum": 0,
                                            "maximum": 1},
                                           "the fidelity the pool's fresh pairs have now",
                                           default=None)


@dataclass(frozen=True)
class Listening(AppMessage):
    """LISTENING: the application now receives the pairs requested on ``purpose`` (or no
    longer, after UNLISTEN: ``active`` false)."""

    TYPE: ClassVar[str] = "LISTENING"
    DIRECTION: ClassVar[str] = "reply"
    purpose: int = spec(_PURPOSE, "the purpose id")
    active: bool = spec({"type": "boolean"}, "listening from now on (false after UNLISTEN)")


@dataclass(frozen=True)
class Pair(AppMessage):
    """PAIR: one pair for the application — for its request (``request_id``) or, at the far
    end, for the purpose it listens on (``request_id`` absent). Both ends' PAIRs of one pair
    carry the same ``pool`` and ``pair_id``, and the Bell state in the same frame."""

    TYPE: ClassVar[str] = "PAIR"
    DIRECTION: ClassVar[str] = "reply"
    pool: str = spec(_NAME, "the link or path the pair came from")
    pair_id: int = spec({"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF},
                        "the pair's number in its pool (the same at both ends)")
    remote: str = spec(_NAME, "the node holding the other half")
    purpose: int = spec(_PURPOSE, "the purpose id of the request")
    bell_state: str = spec(_BELL, "the Bell state the pair is in (in the pool's frame)")
    fidelity: float = spec({"type": "number", "minimum": 0, "maximum": 1},
                           "the estimated fidelity to bell_state at delivery")
    kind: str = spec({"enum": ["keep", "measure"]}, "as requested")
    request_id: str | None = spec({"type": ["string", "null"], "pattern": REQUEST_ID_PATTERN},
                                  "the request it serves (absent at the listening end)",
                                  default=None)
    qubit: int | None = spec({"type": ["integer", "null"], "minimum": 0, "maximum": 0xFFFF},
                             "keep: the QDevice qubit holding this end's half", default=None)
    hold_ms: int | None = spec({"type": ["integer", "null"], "minimum": 0},
                               "keep: the qubit is the application's this long from now",
                               default=None, unit="ms")
    basis: str | None = spec({"enum": ["Z", "X", "Y", None]}, "measure: the basis measured",
                             default=None)
    outcome: int | None = spec({"enum": [0, 1, None]}, "measure: the outcome", default=None)
    remote_application: str | None = spec({"type": ["string", "null"],
                                           "pattern": NAME_PATTERN},
                                          "the application at the other end that requested "
                                          "it (at the listening end)", default=None)
    index: int | None = spec({"type": ["integer", "null"], "minimum": 1},
                             "the pair's number within its request (1 = first)", default=None)


@dataclass(frozen=True)
class Done(AppMessage):
    """DONE: every pair asked for was delivered (terminal)."""

    TYPE: ClassVar[str] = "DONE"
    DIRECTION: ClassVar[str] = "reply"
    request_id: str = spec(_REQUEST_ID, "the request")
    pairs: int = spec(_COUNT, "pairs delivered")


@dataclass(frozen=True)
class Error(AppMessage):
    """ERROR: the request ended without all its pairs, or was refused (terminal). ``code`` is
    for programs, ``reason`` for people."""

    TYPE: ClassVar[str] = "ERROR"
    DIRECTION: ClassVar[str] = "reply"
    code: ErrorCode = spec({"enum": [c.value for c in ErrorCode]}, "what went wrong")
    reason: str = spec({"type": "string", "maxLength": 500}, "what went wrong, for a person")
    request_id: str | None = spec({"type": ["string", "null"], "maxLength": 200},
                                  "the request (absent when the message had no readable id)",
                                  default=None)
    pairs: int = spec(_COUNT, "pairs delivered before the error", default=0)
    fidelity_estimate: float | None = spec({"type": ["number", "null"], "minimum": 0,
                                            "maximum": 1},
                                           "fidelity_unreachable: what the pool's fresh pairs "
                                           "have now", default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.code, ErrorCode):
            object.__setattr__(self, "code", ErrorCode(self.code))


@dataclass(frozen=True)
class Expired(AppMessage):
    """EXPIRED: the request's ``timeout_s`` passed before all its pairs came (terminal)."""

    TYPE: ClassVar[str] = "EXPIRED"
    DIRECTION: ClassVar[str] = "reply"
    request_id: str = spec(_REQUEST_ID, "the request")
    pairs: int = spec(_COUNT, "pairs delivered before the deadline")


@dataclass(frozen=True)
class Cancelled(AppMessage):
    """CANCELLED: the request ended at the application's CANCEL (terminal)."""

    TYPE: ClassVar[str] = "CANCELLED"
    DIRECTION: ClassVar[str] = "reply"
    request_id: str = spec(_REQUEST_ID, "the request")
    pairs: int = spec(_COUNT, "pairs delivered before the cancel")


@dataclass(frozen=True)
class Result(AppMessage):
    """RESULT: the gates of an OPERATE ran (its one reply unless ``ERROR``)."""

    TYPE: ClassVar[str] = "RESULT"
    DIRECTION: ClassVar[str] = "reply"
    request_id: str = spec(_REQUEST_ID, "the OPERATE")
    pool: str = spec(_NAME, "the pool of the pair")
    pair_id: int = spec({"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF}, "the pair")
    outcomes: list[int] = spec({"type": "array", "items": {"enum": [0, 1]}},
                               "one outcome per meas gate, in order (0 = the +1 eigenstate)")
    released: bool = spec({"type": "boolean"}, "the qubit is no longer the application's")
    hold_ms: int | None = spec({"type": ["integer", "null"], "minimum": 0},
                               "how long the qubit stays the application's (absent once "
                               "released)", default=None, unit="ms")
    fidelity: float | None = spec(
        {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "the pair's estimated fidelity to its Bell state when the device answered: the "
        "delivered estimate aged by the node's memory model (T1, T2) to that moment, both "
        "halves decaying (what the pair was worth to these gates)", default=None)
    photons: list[int] | None = spec(
        {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}},
        "one photon number per send gate, in order (the receiver's receive names it)",
        default=None)


REQUEST_TYPES: dict[str, type[AppMessage]] = {
    m.TYPE: m for m in (Request, Cancel, Listen, Unlisten, Operate)}
REPLY_TYPES: dict[str, type[AppMessage]] = {
    m.TYPE: m for m in (Accepted, Listening, Pair, Done, Error, Expired, Cancelled, Result)}
#: what applications send each other (on ``<sender>/to/<receiver>``; nodes never read it)
DATA_TYPES: dict[str, type[AppMessage]] = {Data.TYPE: Data}
#: the replies that end a request: exactly one per request
TERMINAL_TYPES = frozenset({"DONE", "ERROR", "EXPIRED", "CANCELLED", "RESULT"})


def parse_request(d: Any) -> AppMessage:
    """An application's message from its JSON object; ValueError naming what is wrong."""
    if not isinstance(d, Mapping):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    kind = d.get("type")
    cls = REQUEST_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"type: expected one of {sorted(REQUEST_TYPES)}, got {str(kind)[:40]!r}")
    return cls.from_dict(d)


def parse_reply(d: Any) -> AppMessage:
    """A node's reply from its JSON object (for clients); ValueError naming what is wrong."""
    if not isinstance(d, Mapping):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    kind = d.get("type")
    cls = REPLY_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"type: expected one of {sorted(REPLY_TYPES)}, got {str(kind)[:40]!r}")
    return cls.from_dict(d)
