"""JSON Schemas of the link-layer messages' bodies (:mod:`qnode.daemon.linklayer.messages`),
generated from the message dataclasses, for the AsyncAPI document (``docs/gen_asyncapi.py``) and
for tests that check what travels on the bus.

Each schema is a JSON Schema **draft-07** object (the dialect AsyncAPI 3.0 accepts; it uses no
keyword whose meaning differs in draft 2020-12, but ``dependencies``): the properties are the
dataclass fields, their JSON types from the annotations (``int`` → integer, ``float`` → number,
``X | None`` → X or null, ``Literal`` → enum, ``tuple[X, ...]`` → array, ``ErrCode`` → its names
and numbers), ``required`` are the fields without a default, and no other property is allowed
(``from_dict`` refuses unknown fields). ``type`` repeats the message type and may be left out,
as ``from_dict`` reads a body without it. The ranges, choices and patterns that the classes'
validators impose field by field are stated too (``_FIELD_RULES``, ``_CLASS_RULES``); rules that
tie fields together are not, except "all or none" groups (``dependencies``). So a body the schema
refuses is one the class refuses, but not always the other way round: for instance an OK-K
without ``goodness_time_ps``, an ERR other than EXPIRE with a range, a HERALD whose ``next_seq``
is not ``first_seq + count`` or whose ``bell`` has the wrong length, a TESTS whose ``bases`` are
not one per pair, or SWAP_RES weights that do not sum to 1 pass the schema.

:class:`~qnode.daemon.linklayer.messages.Herald` travels in its columnar form
(:meth:`~qnode.daemon.linklayer.messages.Herald.to_dict`), not as its dataclass fields; its
schema says so (``_HERALD_COLUMNS``).

Pure: the standard library and the messages module only.
"""
from __future__ import annotations

import dataclasses
import enum
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin, get_type_hints

from qnode.daemon.linklayer.messages import (
    BASES,
    BELL_STATES,
    CODECS,
    INT64_MAX,
    MAX_ABS,
    MAX_HERALD_COUNT,
    MAX_HOLD_MS,
    MAX_HOPS,
    MAX_LAP,
    MAX_TESTS,
    MESSAGE_TYPES,
    PURIFICATION_PROTOCOLS,
    RANDOM_BASIS,
    SEQ_HALF,
    TWIRLS,
    Herald,
)

#: the JSON Schema dialect of every schema here
DIALECT = "http://json-schema.org/draft-07/schema#"
#: the largest 32-bit sequence number (``SEQ_MOD - 1``)
SEQ_MAX = 2 * SEQ_HALF - 1
#: a station epoch: 16 lowercase hex digits (``qnode.daemon.linklayer.sequence.EPOCH_RE``)
EPOCH_PATTERN = "^[0-9a-f]{16}$"
#: standard base64 with padding (the HERALD's ``bell`` and ``dt``)
BASE64_PATTERN = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

_SEQ: dict[str, Any] = {"minimum": 0, "maximum": SEQ_MAX}
_U16: dict[str, Any] = {"minimum": 0, "maximum": 0xFFFF}
_U32: dict[str, Any] = {"minimum": 0, "maximum": 0xFFFFFFFF}
_PROBABILITY: dict[str, Any] = {"minimum": 0, "maximum": 1}
_NON_NEGATIVE: dict[str, Any] = {"minimum": 0}
_NON_EMPTY: dict[str, Any] = {"minLength": 1}
_LAP: dict[str, Any] = {"minimum": 0, "maximum": MAX_LAP}
_ABSOLUTE: dict[str, Any] = {"minimum": 0, "maximum": MAX_ABS}

#: what the validators require of a field, by its name in every message that has it (a rule
#: with ``items`` constrains an array's items)
_FIELD_RULES: dict[str, dict[str, Any]] = {
    "link": _NON_EMPTY, "remote_node": _NON_EMPTY, "origin": _NON_EMPTY, "path": _NON_EMPTY,
    "min_fidelity": _PROBABILITY, "goodness": _PROBABILITY,
    "max_time_ms": _NON_NEGATIVE, "goodness_time_ps": _NON_NEGATIVE, "chunk": _NON_NEGATIVE,
    "time": _NON_NEGATIVE,
    "left_seq": _SEQ, "right_seq": _SEQ, "left_link": _NON_EMPTY, "right_link": _NON_EMPTY,
    "left_wait_s": _NON_NEGATIVE, "right_wait_s": _NON_NEGATIVE, "left_age_s": _NON_NEGATIVE,
    "right_age_s": _NON_NEGATIVE, "t1_s": _NON_NEGATIVE, "t2_s": _NON_NEGATIVE,
    "purpose_id": _U16, "create_id": _U16, "qubit": _U16,
    "number": {"minimum": 1, "maximum": 0xFFFF},
    "priority": {"minimum": 0, "maximum": 7},
    "random_basis": {"enum": list(RANDOM_BASIS)},
    "seq": _SEQ, "seq_lo": _SEQ, "seq_hi": _SEQ, "expected_seq": _SEQ, "first_seq": _SEQ,
    "next_seq": _SEQ, "kept": _SEQ, "sacrificed": _SEQ,
    "bell_state": {"enum": list(BELL_STATES)},
    "basis": {"enum": list(BASES)},
    "hold_ms": {"minimum": 0, "maximum": MAX_HOLD_MS},
    "lap": _LAP, "lap_lo": _LAP, "lap_hi": _LAP,
    "pos": _ABSOLUTE, "start": _ABSOLUTE,
    "epoch": {"pattern": EPOCH_PATTERN},
    "round": _U32,
    "protocol": {"enum": list(PURIFICATION_PROTOCOLS)},
    "kept_axes": {"enum": list(TWIRLS)}, "sacrificed_axes": {"enum": list(TWIRLS)},
    "readout_error": {"minimum": 0, "maximum": 0.5},
}
#: rules of one message's field (by message type), over :data:`_FIELD_RULES`
_CLASS_RULES: dict[tuple[str, str], dict[str, Any]] = {
    ("OK", "outcome"): {"enum": [0, 1]},
    ("PURIFY", "outcome"): {"enum": [0, 1]},
    ("PURIFY_RES", "outcome"): {"enum": ["0", "1", "-"]},
    ("SWAP_RES", "outcome"): {"enum": list(BELL_STATES)},
    ("SWAP_RES", "left_weights"): {"items": _PROBABILITY},
    ("SWAP_RES", "right_weights"): {"items": _PROBABILITY},
    ("SWAP_RES", "left_bell"): {"enum": list(BELL_STATES)},
    ("SWAP_RES", "right_bell"): {"enum": list(BELL_STATES)},
    ("SWAP_RES", "hop"): {"minimum": 1, "maximum": MAX_HOPS - 1},
    ("SWAP_RES", "gate_fidelity"): _PROBABILITY,
    ("SWAP_RES", "meas_fidelity"): _PROBABILITY,
    ("TESTS", "seqs"): {"maxItems": MAX_TESTS, "items": _SEQ},
    ("TESTS", "bases"): {"pattern": "^[XYZ]*$"},
    ("TESTS", "outcomes"): {"pattern": "^[01-]*$"},
    ("HELD", "seqs"): {"minItems": 1, "maxItems": MAX_TESTS, "items": _SEQ},
    ("HELD", "times"): {"minItems": 1, "maxItems": MAX_TESTS, "items": _NON_NEGATIVE},
}
#: fields that come all together or not at all (``dependencies``), by message type
_GROUPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "EXPIRE": (("lap_lo", "lap_hi"),),
    "EXPIRE_ACK": (("lap_lo", "lap_hi"),),
    "HERALD": (("epoch", "lap", "start"),),
}
#: the HERALD's columnar JSON form: its fields in order, and the schema of those that are not
#: dataclass fields (``Herald._FIELDS``; the epoch's fields ``epoch``, ``lap``, ``start`` follow)
_HERALD_FIELDS = ("link", "chunk", "first_seq", "count", "next_seq", "codec", "bell",
                  "time0_ps", "dt_bytes", "dt")
_HERALD_EPOCH_FIELDS = ("epoch", "lap", "start")
_HERALD_COLUMNS: dict[str, dict[str, Any]] = {
    "count": {"type": "integer", "minimum": 0, "maximum": MAX_HERALD_COUNT,
              "description": "successes in the batch"},
    "codec": {"type": "string", "enum": list(CODECS),
              "description": "encoding of bell and dt: base64 (raw) or base64 of zlib"},
    "bell": {"type": "string", "pattern": BASE64_PATTERN,
             "description": "the Bell-state codes 0-3, 2-bit packed, four per byte, the first "
                            "in the low bits"},
    "time0_ps": {"type": ["integer", "null"], "minimum": 0, "maximum": INT64_MAX,
                 "description": "the first success's detection time (ps); null when empty"},
    "dt_bytes": {"type": "integer", "enum": [0, 1, 2, 4, 8],
                 "description": "bytes per time delta; 0 iff count <= 1"},
    "dt": {"type": "string", "pattern": BASE64_PATTERN,
           "description": "the count - 1 successive time differences, zigzag-mapped, "
                          "little-endian, dt_bytes each"},
}

_SCALARS: dict[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _is_optional(hint: Any) -> tuple[Any, bool]:
    """(the hint without ``None``, whether it allowed ``None``)."""
    if get_origin(hint) in (types.UnionType, typing.Union):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _type_schema(hint: Any, where: str) -> dict[str, Any]:
    """The JSON Schema of a (non-None) annotation; TypeError for one this module cannot say."""
    origin, args = get_origin(hint), get_args(hint)
    if isinstance(hint, type) and hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if origin is Literal:
        kinds = {_SCALARS[type(a)] for a in args}
        return {"type": kinds.pop() if len(kinds) == 1 else sorted(kinds), "enum": list(args)}
    if isinstance(hint, type) and issubclass(hint, enum.IntEnum):
        # the name on the wire; the numbers are read too
        return {"enum": [e.name for e in hint] + [int(e) for e in hint]}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [e.name for e in hint]}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _type_schema(args[0], where)}
        if args and all(a == args[0] for a in args):
            return {"type": "array", "items": _type_schema(args[0], where),
                    "minItems": len(args), "maxItems": len(args)}
    raise TypeError(f"{where}: no JSON Schema for the annotation {hint!r}")


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` that also admits null."""
    out = dict(schema)
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    if "type" in out:
        kinds = [out["type"]] if isinstance(out["type"], str) else list(out["type"])
        out["type"] = [*kinds, "null"]
    elif "enum" not in out:
        return {"anyOf": [schema, {"type": "null"}]}
    return out


def _with_rules(schema: dict[str, Any], rules: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with the validators' ``rules`` (``items`` merged into the item schema)."""
    out = dict(schema)
    for key, value in rules.items():
        if key == "items":
            out["items"] = {**out.get("items", {}), **value}
        else:
            out[key] = list(value) if isinstance(value, list) else value
    return out


def _rules(mtype: str, name: str) -> dict[str, Any]:
    return {**_FIELD_RULES.get(name, {}), **_CLASS_RULES.get((mtype, name), {})}


def _description(cls: type) -> str:
    """The first paragraph of the class docstring, on one line."""
    doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    return " ".join(doc.split())


def _field_schema(cls: type[Any], hints: Mapping[str, Any], name: str, *,
                  allow_null: bool = True) -> dict[str, Any]:
    mtype: str = cls.TYPE
    inner, optional = _is_optional(hints[name])
    schema = _with_rules(_type_schema(inner, f"{cls.__name__}.{name}"), _rules(mtype, name))
    return _nullable(schema) if optional and allow_null else schema


def message_schema(cls: type[Any]) -> dict[str, Any]:
    """The JSON Schema (draft-07) of the body of link-layer message class ``cls`` (a class of
    :data:`~qnode.daemon.linklayer.messages.MESSAGE_TYPES`): what ``cls.from_dict`` reads and
    ``to_dict()`` writes, as far as a schema can say it (module docstring)."""
    mtype: str = cls.TYPE
    hints = get_type_hints(cls)
    props: dict[str, Any] = {"type": {
        "const": mtype, "description": "the message type, as in the envelope (may be left out)"}}
    if cls is Herald:
        required = list(_HERALD_FIELDS)
        for name in _HERALD_FIELDS + _HERALD_EPOCH_FIELDS:
            # the epoch's fields are left out, not null, when a station has none
            props[name] = (dict(_HERALD_COLUMNS[name]) if name in _HERALD_COLUMNS
                           else _field_schema(cls, hints, name, allow_null=False))
    else:
        required = []
        for f in dataclasses.fields(cls):
            props[f.name] = _field_schema(cls, hints, f.name)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
    schema: dict[str, Any] = {
        "$schema": DIALECT, "title": mtype, "description": _description(cls),
        "type": "object", "properties": props, "required": required,
        "additionalProperties": False}
    groups = _GROUPS.get(mtype, ())
    if groups:
        schema["dependencies"] = {name: [other for other in group if other != name]
                                  for group in groups for name in group}
    return schema


def message_schemas() -> dict[str, dict[str, Any]]:
    """The schema of every link-layer message, by type (in the order of ``MESSAGE_TYPES``)."""
    return {mtype: message_schema(cls) for mtype, cls in MESSAGE_TYPES.items()}
