"""Generate docs/operators/config-reference.md from the config code, so the page cannot drift.

    python docs/gen_config_reference.py > docs/operators/config-reference.md   # regenerate
    python docs/gen_config_reference.py --check      # exit 1 if the committed page is stale

Everything on the page comes from the config module (``CONFIG_MODULE``):

* the sections and their keys: the ``_Reader(path, "<section>", raw, {allowed keys})`` calls of
  the parser, read with :mod:`ast`;
* type, default and allowed range or choices of each key: the parser's typed reads
  (``r.number("fidelity", 0.9, 0, 1)``, ``r.string(..., choices=...)``, ``_flag``, ``_pair``,
  ``_channels``, ``_instrument_ref``, ``r.key_file``, ...), with the reader variable followed
  through assignments and calls to the section it reads;
* the further rules: every ``r.fail("<key>", "<problem>")`` and ``ConfigError`` the parser
  raises for a named key;
* the meaning of each key: the comment beside it in the module docstring's annotated layout,
  else a ``#:`` comment on the dataclass field of the same name, else :data:`NOTES` below
  (which the test suite keeps honest: a note for a key the code does not read, or that the
  code already documents, fails ``tests/docs/test_docs.py``);
* the section introductions: the docstrings of the section's dataclasses (found through the
  type hints of ``NodeConfig``), and the instrument kinds, roles and key-file rules from the
  module's constants; the kinds' descriptions from the registry of instrument kinds
  (``KINDS_MODULE``), the keys of a QDevice's gate noise from ``GATE_NOISE_MODULE``.

When the config code moves, change ``CONFIG_MODULE`` (and the imports in :func:`extras`).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import re
import sys
import textwrap
import tomllib
import typing
from pathlib import Path
from typing import Any

CONFIG_MODULE = "qnode.daemon.runtime.config"
KME_MODULE = "qnode.daemon.runtime.kme_config"
KEYS_MODULE = "qnode.daemon.bus.keys"
INSTRUMENTS_MODULE = "qnode.daemon.runtime.instruments"
KINDS_MODULE = "qnode.drivers.kinds"
GATE_NOISE_MODULE = "qnode.drivers.qdevice_noise"
PAGE = Path(__file__).resolve().parent / "operators" / "config-reference.md"

#: Meanings of keys the config code does not explain (no comment in its annotated layout, no
#: ``#:`` field comment). Each entry must name a key the parser reads and must not shadow a
#: meaning the code gives: tests/docs/test_docs.py checks both.
NOTES: dict[tuple[str, str], str] = {
    ("broker", "client_cert"): "the node's TLS client certificate (PEM); its CN is the node id "
                               "the broker's ACL checks",
    ("broker", "client_key"): "the private key of `client_cert` (PEM)",
    ("broker", "keepalive_s"): "MQTT keep-alive interval (s)",
    ("instruments.<name>", "address"): "where the instrument is: see the kinds table above "
                                       "for what each kind's address is",
    ("instruments.<name>", "timeout_s"): "reply timeout of every request to the instrument (s)",
    ("links", "peer"): "the node at the other end of the link",
    ("memory", "gate_average_fidelity_2q"): "instead of `gate_depolarising_2q`: the average gate "
                                            "fidelity F_avg of the QDevice's CNOT (what "
                                            "randomised benchmarking reports), read as "
                                            "g = 1 − 4/3·(1 − F_avg)",
    ("memory", "gate_average_fidelity_1q"): "instead of `gate_depolarising_1q`: the average gate "
                                            "fidelity F_avg of its single-qubit rotations, read "
                                            "as g = 1 − 2·(1 − F_avg)",
    ("paths", "id"): "the path's id: the `link` of the end-to-end pairs' OKs",
    ("paths", "ends"): "instead of `nodes`, for a path through one repeater: its two end nodes",
    ("paths", "repeater"): "instead of `nodes`, with `ends`: the one repeater",
    ("analyzer", "tagger"): "the time tagger (an instrument of a tagger kind) of this analyzer",
    ("analyzer", "max_pair_age_s"): "cut-off of the delivered-pair inventory (s), as in "
                                    "`[memory]` (0: never)",
    ("source", "oven_temperature_c"): "the oven's set point (°C)",
    ("source", "max_pump_mw"): "the highest pump power the FEU may choose (mW, or mA for an "
                               "itc4001 pump)",
    ("thresholds", "max_qber"): "the highest acceptable link QBER (read and range-checked; "
                                "no role acts on it yet)",
    ("thresholds", "min_visibility"): "the lowest acceptable link visibility (read and "
                                      "range-checked; no role acts on it yet)",
    ("thresholds", "min_car"): "the lowest acceptable coincidence-to-accidental ratio (read "
                               "and range-checked; no role acts on it yet)",
    ("metrics", "telemetry_interval_s"): "period of the telemetry record on MQTT and "
                                         "Prometheus (s)",
}

#: What the parser's helper reads mean (type, allowed), by helper name.
_ACCESSORS = {"number", "integer", "string", "file", "key_file", "fail", "has"}
_HELPERS = {"_flag", "_pair", "_channels", "_instrument_ref"}
#: The parser's reader of a QDevice's gate noise: ``_gate_noise(r, <qubits>)`` reads three keys.
_GATE_NOISE = "_gate_noise"
_ELLIPSIS = "…"


@dataclasses.dataclass
class Key:
    name: str
    type: str = ""
    default: str = ""
    allowed: list[str] = dataclasses.field(default_factory=list)
    meaning: str = ""
    checks: list[str] = dataclasses.field(default_factory=list)
    optional: bool = False
    required: bool = False


@dataclasses.dataclass
class Section:
    id: str                       # "memory", "instruments.<name>", "links"
    array: bool = False           # [[links]]
    allowed: list[str] = dataclasses.field(default_factory=list)
    keys: dict[str, Key] = dataclasses.field(default_factory=dict)
    header_comment: str = ""
    intro: list[str] = dataclasses.field(default_factory=list)
    checks: list[str] = dataclasses.field(default_factory=list)

    @property
    def title(self) -> str:
        return f"[[{self.id}]]" if self.array else f"[{self.id}]"

    def key(self, name: str) -> Key:
        if name not in self.keys:
            self.keys[name] = Key(name)
        return self.keys[name]


# --------------------------------------------------------------------------- small evaluators

class _NoValue(Exception):
    pass


def _value(node: ast.AST, ns: dict[str, Any]) -> Any:
    """A literal, arithmetic on literals, or a module-level constant of the config module
    (tuples, dicts, strings, numbers); ``tuple(NAME)``/``list(NAME)`` of one. Anything that
    depends on the environment or the input (``os.environ``, a local) is no value."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        out: list[Any] = []
        for elt in node.elts:
            if isinstance(elt, ast.Starred):
                out.extend(_value(elt.value, ns))
            else:
                out.append(_value(elt, ns))
        return tuple(out) if not isinstance(node, ast.Set) else set(out)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand, ns)
    if isinstance(node, ast.BinOp):
        a, b = _value(node.left, ns), _value(node.right, ns)
        ops = {ast.Pow: lambda: a ** b, ast.Mult: lambda: a * b, ast.LShift: lambda: a << b,
               ast.Add: lambda: a + b, ast.Sub: lambda: a - b}
        if type(node.op) in ops:
            return ops[type(node.op)]()
    if isinstance(node, ast.Name) and node.id.isupper() and node.id in ns:
        v = ns[node.id]
        if isinstance(v, (str, int, float, tuple, dict, frozenset)):
            return v
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("tuple", "list", "sorted") and len(node.args) == 1):
        inner = _value(node.args[0], ns)
        return {"tuple": tuple, "list": list, "sorted": sorted}[node.func.id](inner)
    raise _NoValue


def _try(node: ast.AST | None, ns: dict[str, Any]) -> Any:
    if node is None:
        return _NoValue
    try:
        return _value(node, ns)
    except (_NoValue, TypeError, ValueError, KeyError):
        return _NoValue


def _toml(v: Any) -> str:
    """A value as it is written in the TOML file."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, float):
        return f"{v:g}" if ("e" in f"{v:g}" or v != int(v)) else f"{v:.1f}"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


def _num(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) <= 1e18:
        v = int(v)
    if isinstance(v, int) and abs(v) >= 10**6 and v == 10 ** (len(str(abs(v))) - 1):
        return f"10^{len(str(abs(v))) - 1}"
    return f"{v:g}" if isinstance(v, float) else f"{v}"


def _text(node: ast.AST, ns: dict[str, Any], bind: dict[str, str] | None = None
          ) -> str | None:
    """The text of a message: a string, or an f-string whose computed parts are shown as
    their value when it is a module constant (or a loop variable bound in ``bind``) and as
    "…" otherwise; "<text>, got …" is cut."""
    bind = bind or {}
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
    elif isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                parts.append(str(v.value))
            elif isinstance(v, ast.FormattedValue):
                if isinstance(v.value, ast.Name) and v.value.id in bind:
                    b = bind[v.value.id]
                    parts.append(repr(b) if v.conversion == ord("r") else b)
                    continue
                val = _try(v.value, ns)
                parts.append(_ELLIPSIS if val is _NoValue else str(val))
        text = "".join(parts)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        a, b = _text(node.left, ns, bind), _text(node.right, ns, bind)
        return None if a is None or b is None else a + b
    elif isinstance(node, ast.IfExp):
        a, b = _text(node.body, ns, bind), _text(node.orelse, ns, bind)
        return None if a is None or b is None else f"{a} / {b}"
    else:
        return None
    text = re.split(r",? got …$|, got …|: got …", text)[0]
    return text.strip()


def _key_names(node: ast.AST, loops: dict[str, list[str]], ns: dict[str, Any]) -> list[str]:
    """The key(s) an expression names: a string, a loop variable over literal keys, either
    branch of a conditional, or an f-string (``bases[{i}]`` → ``bases[…]``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name) and node.id in loops:
        return loops[node.id]
    if isinstance(node, ast.IfExp):
        return _key_names(node.body, loops, ns) + _key_names(node.orelse, loops, ns)
    if isinstance(node, ast.JoinedStr):
        t = _text(node, ns)
        return [t] if t else []
    return []


def _md(text: str) -> str:
    """reStructuredText roles and literals of a docstring as Markdown."""
    text = re.sub(r":[a-z]+:`~?\.?([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`")
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------- the parser's code

def _function_sections(tree: ast.Module, ns: dict[str, Any]
                       ) -> tuple[dict[str, dict[str, str]], dict[str, Section]]:
    """For each parser function, which of its variables is a reader of which section, and the
    sections with their allowed keys (from the ``_Reader`` calls)."""
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    sections: dict[str, Section] = {}

    def reader_section(call: ast.AST, local: dict[str, ast.AST] | None = None) -> str | None:
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id == "_Reader" and len(call.args) >= 4):
            return None
        prefix = call.args[1]
        if isinstance(prefix, ast.Name) and local and prefix.id in local:
            prefix = local[prefix.id]      # key = f"instruments.{name}"; _Reader(path, key, ...)
        if isinstance(prefix, ast.Constant):
            sid, array = str(prefix.value), False
        elif isinstance(prefix, ast.JoinedStr):
            raw = "".join(str(v.value) if isinstance(v, ast.Constant) else "<name>"
                          for v in prefix.values)
            array = raw.endswith("[<name>]")
            sid = raw.removesuffix("[<name>]")
        else:
            return None
        sec = sections.setdefault(sid, Section(sid, array))
        allowed = _try(call.args[3], ns)
        if allowed is not _NoValue:
            sec.allowed = sorted(set(sec.allowed) | set(allowed))
        return sid

    readers: dict[str, dict[str, str]] = {name: {} for name in funcs}
    for name, f in funcs.items():
        local = _locals(f)
        for node in ast.walk(f):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name):
                sid = reader_section(node.value, local)
                if sid is not None:
                    readers[name][node.targets[0].id] = sid
            elif isinstance(node, ast.Call):
                reader_section(node, local)
    changed = True
    while changed:          # follow readers into the functions they are passed to
        changed = False
        for name, f in funcs.items():
            for node in ast.walk(f):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id in funcs):
                    continue
                callee = funcs[node.func.id]
                params = [a.arg for a in callee.args.args]
                for i, arg in enumerate(node.args[:len(params)]):
                    sid = (readers[name].get(arg.id) if isinstance(arg, ast.Name)
                           else reader_section(arg))
                    if sid is not None and params[i] not in readers[callee.name]:
                        readers[callee.name][params[i]] = sid
                        changed = True
    return readers, sections


def _locals(f: ast.FunctionDef) -> dict[str, ast.AST]:
    """The expressions a function's simple local names are assigned (the last one wins)."""
    return {n.targets[0].id: n.value for n in ast.walk(f)
            if isinstance(n, ast.Assign) and len(n.targets) == 1
            and isinstance(n.targets[0], ast.Name)}


def _condition(node: ast.AST, local: dict[str, ast.AST]) -> str:
    """A ``required=`` condition in words: a local read from a key is that key (``cert is not
    None`` → "with `client_cert`"), other locals are shown as the expression they hold."""
    def key_of(n: ast.AST) -> str | None:
        v = local.get(n.id) if isinstance(n, ast.Name) else None
        if isinstance(v, ast.Call) and v.args and isinstance(v.args[0], ast.Constant) \
                and isinstance(v.func, ast.Attribute) and v.func.attr in _ACCESSORS:
            return str(v.args[0].value)
        return None

    if (isinstance(node, ast.Compare) and len(node.ops) == 1
            and isinstance(node.ops[0], ast.IsNot) and key_of(node.left)):
        return f"with `{key_of(node.left)}`"
    if (isinstance(node, ast.Compare) and len(node.ops) == 1
            and isinstance(node.ops[0], ast.Eq) and key_of(node.left)
            and isinstance(node.comparators[0], ast.Constant)):
        return f"when `{key_of(node.left)} = {_toml(node.comparators[0].value)}`"
    if isinstance(node, ast.Name) and node.id in local:
        return f"when `{ast.unparse(local[node.id])}`"
    return f"when `{ast.unparse(node)}`"


def _loops(f: ast.FunctionDef, ns: dict[str, Any]) -> dict[str, list[str]]:
    """Loop variables that run over literal keys (``for key in ("a", *B_KEYS)``)."""
    out: dict[str, list[str]] = {}
    for node in ast.walk(f):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            v = _try(node.iter, ns)
            if isinstance(v, (tuple, list)) and all(isinstance(x, str) for x in v):
                out[node.target.id] = list(v)
    return out


def _describe_read(call: ast.Call, method: str, ns: dict[str, Any], key: Key,
                   local: dict[str, ast.AST]) -> None:
    """Type, default and allowed values from one typed read of ``key``."""
    args = call.args
    kw = {k.arg: k.value for k in call.keywords if k.arg}
    if method in ("number", "integer"):
        key.type = "number" if method == "number" else "integer"
        default, lo, hi = (_try(a, ns) for a in (args[1:4] + [None] * 3)[:3])
        if default is not _NoValue:
            key.default = _toml(float(default) if method == "number" else default)
        if lo is not _NoValue and hi is not _NoValue:
            key.allowed.append(f"{_num(lo)} … {_num(hi)}")
    elif method == "string":
        key.type = key.type or "string"
        default = _try(args[1], ns) if len(args) > 1 else None
        if default is _NoValue:
            key.default = "computed at start (see meaning)"
        elif default:
            key.default = _toml(default)
        elif default is None:
            key.required = True
        else:                                   # r.string("qdevice", "") or None
            key.optional = True
        if "choices" in kw:
            choices = _try(kw["choices"], ns)
            if choices is not _NoValue:
                key.allowed.append("one of " + ", ".join(f"`{_toml(c)}`" for c in choices))
        if "pattern" in kw:
            key.allowed.append("a name: letters, digits, `-` and `_`, 1–64 characters")
    elif method in ("file", "key_file"):
        key.type = "path"
        req = kw.get("required")
        if method == "file":
            key.allowed.append("a readable file")
            if isinstance(req, ast.Constant) and req.value is True:
                key.required = True
            elif req is not None and not isinstance(req, ast.Constant):
                key.default = f"required {_condition(req, local)}"
        else:
            keys = importlib.import_module(KEYS_MODULE)
            key.allowed.append(f"an HMAC key file: mode 0600 (no group or other access), "
                               f"1–{keys.MAX_KEYS} keys of ≥ {keys.MIN_KEY_BYTES} bytes, one "
                               f"per line; the first signs, all verify")
            reason = _text(req, ns) if req is not None else None
            if isinstance(req, ast.IfExp):
                cond = _condition(req.test, local)
                key.default = f"required {cond}: {_text(req.body, ns)}"
            elif reason:
                key.required = True
                key.checks.append(f"required: {reason}")
    elif method == "_flag":
        key.type = "boolean"
        default = _try(args[2], ns)
        if default is not _NoValue:
            key.default = _toml(default)
    elif method == "_pair":
        key.type = "[number, number]"
        lo, hi, default = (_try(a, ns) for a in args[2:5])
        if default is not _NoValue and default is not None:
            key.default = _toml(default)
        if lo is not _NoValue and hi is not _NoValue:
            key.allowed.append(f"each {_num(lo)} … {_num(hi)} (one per side)")
    elif method == "_channels":
        n, default = _try(args[2], ns), _try(args[3], ns)
        key.type = f"list of {n} integers" if n is not _NoValue else "list of integers"
        if default is not _NoValue:
            key.default = _toml(default)
        key.allowed.append("different tagger channel numbers, 0 … 65535")
    elif method == "_instrument_ref":
        key.type = "instrument name"
        kinds = _try(args[3], ns)
        if kinds is not _NoValue:
            key.allowed.append("an instrument of kind " + " or ".join(f"`{k}`" for k in kinds))
        req = kw.get("required")
        optional = isinstance(req, ast.Constant) and req.value is False
        key.default = ("the only such instrument, if there is exactly one; else none"
                       if optional else "the only such instrument (required if there are "
                                        "none or several)")


def _describe_gate_noise(sec: Section, n_qubits: Any) -> None:
    """The keys ``_gate_noise(r, n_qubits)`` reads: g, the average gate fidelity, the earlier name
    of g (:mod:`qnode.drivers.qdevice_noise`); at most one of them."""
    noise = importlib.import_module(GATE_NOISE_MODULE)
    keys = noise.KEYS[n_qubits]
    rule = (f"at most one of the {n_qubits}-qubit gates' keys may be given (g, the average gate "
            f"fidelity, or g by its earlier name)")
    for name in keys.all:
        k = sec.key(name)
        k.type, k.optional = "number", True
        k.allowed = [f"{_num(noise.min_average_fidelity(n_qubits))} … 1"
                     if name == keys.average_fidelity else "0 … 1"]
        if rule not in k.checks:
            k.checks.append(rule)
    sec.key(keys.depolarising).default = _toml(1.0)


def _scan(tree: ast.Module, ns: dict[str, Any]) -> tuple[dict[str, Section], list[str]]:
    readers, sections = _function_sections(tree, ns)
    general: list[str] = []
    funcs = [f for f in tree.body if isinstance(f, ast.FunctionDef)]
    for f in funcs:
        mine, loops, local = readers[f.name], _loops(f, ns), _locals(f)
        has: set[tuple[str, str]] = set()
        guarded: set[int] = set()
        for node in ast.walk(f):        # reads inside `x if r.has("k") else None`
            if isinstance(node, ast.IfExp):
                t = node.test
                if (isinstance(t, ast.Call) and isinstance(t.func, ast.Attribute)
                        and t.func.attr == "has"):
                    guarded.update(id(n) for n in ast.walk(node.body))
        for node in ast.walk(f):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            if (isinstance(fn, ast.Name) and fn.id == _GATE_NOISE and len(node.args) == 2
                    and isinstance(node.args[0], ast.Name) and node.args[0].id in mine):
                _describe_gate_noise(sections[mine[node.args[0].id]], _try(node.args[1], ns))
                continue
            if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) \
                    and fn.value.id in mine and fn.attr in _ACCESSORS and node.args:
                sid, method, key_arg, msg_arg = mine[fn.value.id], fn.attr, node.args[0], 1
            elif isinstance(fn, ast.Name) and fn.id in _HELPERS and len(node.args) >= 2 \
                    and isinstance(node.args[0], ast.Name) and node.args[0].id in mine:
                sid, method, key_arg, msg_arg = mine[node.args[0].id], fn.id, node.args[1], -1
            elif (isinstance(fn, ast.Attribute) and fn.attr == "get"
                  and isinstance(fn.value, ast.Attribute) and fn.value.attr == "table"
                  and isinstance(fn.value.value, ast.Name) and fn.value.value.id in mine):
                sid, method, key_arg, msg_arg = mine[fn.value.value.id], "get", node.args[0], -1
            elif isinstance(fn, ast.Name) and fn.id == "ConfigError" and len(node.args) == 3:
                for name in _key_names(node.args[1], loops, ns):
                    bind = ({node.args[1].id: name} if isinstance(node.args[1], ast.Name)
                            else {})
                    text = _text(node.args[2], ns, bind)
                    where, _, k = name.rpartition(".")
                    where = re.sub(r"\[…\]$", "", where)
                    if text and where in sections:
                        sections[where].key(k).checks.append(text)
                    elif text:
                        general.append(f"`{name}`: {text}")
                continue
            else:
                continue
            sec = sections[sid]
            for name in _key_names(key_arg, loops, ns):
                bind = ({key_arg.id: name} if isinstance(key_arg, ast.Name)
                        and key_arg.id in loops else {})
                if method == "fail":
                    text = (_text(node.args[msg_arg], ns, bind) if len(node.args) > msg_arg
                            else None)
                    if not text:
                        continue
                    if sid == "":
                        general.append(f"`{name}`: {text}")
                        continue
                    base = re.sub(r"\[…\]$", "", name)
                    if base in sec.allowed:
                        k = sec.key(base)
                        label = "" if base == name else f"`{name}`: "
                        if text.startswith("is required"):
                            k.required = True
                        if label + text not in k.checks:
                            k.checks.append(label + text)
                    else:
                        sec.checks.append(f"`{name}`: {text}")
                elif method == "has":
                    has.add((sid, name))
                elif method == "get":
                    k = sec.key(name)
                    default = _try(node.args[1], ns) if len(node.args) > 1 else None
                    if default not in (_NoValue, None) and not k.default \
                            and not isinstance(default, dict):
                        k.default = _toml(default)
                    elif default is None:
                        k.required = True
                elif sid != "":
                    k = sec.key(name)
                    _describe_read(node, method, ns, k, local)
                    if id(node) in guarded:
                        k.optional = True
        for sid, name in has:
            if sid in sections and name in sections[sid].allowed:
                sections[sid].key(name).optional = True
    return sections, general


# --------------------------------------------------------------------------- the docstring layout

def _layout(doc: str) -> tuple[list[tuple[str, str, list[tuple[str, Any, str]]]], str]:
    """The annotated layout of the module docstring: (header, header comment, [(key, example
    value, comment)]) per table, with comments continued over lines merged, and the raw
    block."""
    m = re.search(r"Layout::\n\n(.*?)(?:\n\S|\Z)", doc, re.S)
    if m is None:
        return [], ""
    block = textwrap.dedent(m.group(1)).rstrip()
    tables: list[tuple[str, str, list[tuple[str, Any, str]]]] = []
    items: list[list[Any]] = []   # [key, value, comment, continues]

    def close() -> None:
        if not tables:
            return
        header, hcomment, _ = tables[-1]
        groups: list[list[list[Any]]] = []
        for it in items:
            joins = groups and it[2] and (it[3] or groups[-1][-1][2].endswith(","))
            if it[3] and not groups:        # continues the header's comment
                hcomment = f"{hcomment} {it[2]}".strip()
                it[2] = ""
                groups.append([it])
            elif joins:
                groups[-1].append(it)
            else:
                groups.append([it])
        out = []
        for g in groups:
            text = " ".join(it[2] for it in g if it[2]).strip()
            out.extend((it[0], it[1], text if it[2] or len(g) > 1 else "") for it in g)
        tables[-1] = (header, hcomment, out)
        items.clear()

    for line in block.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            text = s.lstrip("#").strip()
            if items:
                items[-1][2] = f"{items[-1][2]} {text}".strip()
            elif tables:
                h, c, kv = tables[-1]
                tables[-1] = (h, f"{c} {text}".strip(), kv)
            continue
        if s.startswith("["):
            close()
            head, _, comment = s.partition("#")
            tables.append((head.strip().strip("[]"), comment.strip(), []))
            continue
        name, _, rest = s.partition("=")
        value, comment = rest.strip(), ""
        for pos in [i for i, c in enumerate(rest) if c == "#"]:
            try:
                tomllib.loads(f"x = {rest[:pos].strip()}")
            except tomllib.TOMLDecodeError:
                continue
            value, comment = rest[:pos].strip(), rest[pos + 1:]
            break
        continues = comment.startswith("  ")
        items.append([name.strip(), tomllib.loads(f"x = {value}")["x"], comment.strip(),
                      continues])
    close()
    return tables, block


def _example_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        inner = {_example_type(x) for x in v}
        return f"list of {inner.pop()}s" if len(inner) == 1 else "list"
    return "table"


def _field_comments(tree: ast.Module, lines: list[str]) -> dict[str, dict[str, str]]:
    """``#:`` comments above the fields of each class: {class: {field: text}}."""
    out: dict[str, dict[str, str]] = {}
    for cls in tree.body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                i, text = stmt.lineno - 2, []
                while i >= 0 and lines[i].strip().startswith("#:"):
                    text.insert(0, lines[i].strip()[2:].strip())
                    i -= 1
                if text:
                    out.setdefault(cls.name, {})[stmt.target.id] = " ".join(text)
    return out


def _section_classes(mod: Any) -> dict[str, list[type]]:
    """The dataclasses of each section: NodeConfig's fields are named like the sections."""
    out: dict[str, list[type]] = {}

    def found(hint: Any) -> list[type]:
        if dataclasses.is_dataclass(hint) and getattr(hint, "__module__", "") == mod.__name__:
            nested = [c for f in typing.get_type_hints(hint).values() for c in found(f)]
            return [hint, *nested]
        return [c for a in typing.get_args(hint) for c in found(a)]

    for field, hint in typing.get_type_hints(mod.NodeConfig).items():
        classes = found(hint)
        if classes:
            out[field] = classes
    return out


# --------------------------------------------------------------------------- the page

def collect() -> tuple[list[Section], list[str], dict[str, Any]]:
    """Sections (in the layout's order), general rules, and the module's constants."""
    mod = importlib.import_module(CONFIG_MODULE)
    source = inspect.getsource(mod)
    tree = ast.parse(source)
    ns = vars(mod)
    sections, general = _scan(tree, ns)
    tables, block = _layout(mod.__doc__ or "")
    comments = _field_comments(tree, source.splitlines())
    classes = _section_classes(mod)
    ordered: list[Section] = []
    for header, hcomment, kvs in tables:
        sid = header
        if sid not in sections:            # [instruments.tagger] is [instruments.<name>]
            first, _, rest = header.partition(".")
            _, dot, sub = rest.partition(".")
            sid = f"{first}.<name>" + (f".{sub}" if dot else "")
        sec = sections.get(sid) or Section(sid)
        sections[sid] = sec
        sec.header_comment = hcomment
        for name, value, text in kvs:
            k = sec.key(name)
            k.meaning = k.meaning or text
            k.type = k.type or _example_type(value)
        layout = [name for name, _, _ in kvs]
        sec.keys = {n: sec.keys[n] for n in sorted(
            sec.keys, key=lambda n: layout.index(n) if n in layout else len(layout))}
        ordered.append(sec)
    ordered += [s for sid, s in sections.items() if s not in ordered and sid]
    for sec in ordered:
        first = sec.id.split(".")[0]
        # [instruments.<name>.options] is free-form: no dataclass of its own
        for cls in [] if sec.id.endswith(".options") else classes.get(first, []):
            doc = cls.__doc__ or ""
            if doc and not doc.startswith(cls.__name__ + "("):
                sec.intro.append(_md(inspect.cleandoc(doc)))
            for name, text in comments.get(cls.__name__, {}).items():
                if name in sec.keys and not sec.keys[name].meaning:
                    sec.keys[name].meaning = _md(text)
        for name in sec.allowed:
            sec.key(name)
        for (sid, name), text in NOTES.items():
            if sid == sec.id and name in sec.keys and not sec.keys[name].meaning:
                sec.keys[name].meaning = text
    return ordered, general, {"block": block, "ns": ns}


def render() -> str:
    sections, general, extra = collect()
    ns = extra["ns"]
    instruments = importlib.import_module(INSTRUMENTS_MODULE)
    out: list[str] = []
    w = out.append
    w("<!-- Generated by docs/gen_config_reference.py from the config code: do not edit; run "
      "`python docs/gen_config_reference.py > docs/operators/config-reference.md`. -->")
    w("")
    w("# Config reference")
    w("")
    w("One TOML file per node (`qnode run --config FILE`; under systemd "
      "`/etc/qnode/<node>.toml`). The whole file is checked at start, before any instrument "
      "is touched: an unknown key, a value of the wrong type or out of range, a missing file "
      "or an instrument of the wrong kind stops the node with one line "
      "`file: key: problem`, e.g. `alice.toml: memory.fidelity: must be a number in [0, 1], "
      "got 1.2`.")
    w("")
    w(f"This page is generated from `{CONFIG_MODULE}`: the parser's own checks give each "
      "key's type, default and allowed values, the annotated layout in its docstring gives "
      "the meanings. An example file for an analyzer node is `systemd/alice.example.toml`; "
      "`qnode demo --keep` keeps the configs of a whole simulated network.")
    w("")
    top = [s for s in sections if s.id]
    w("Top-level tables: " + ", ".join(f"`{s.title}`" for s in top if s.id.count(".") < 2)
      + ". Tables for roles "
      "the node does not list in `node.roles` are refused.")
    w("")
    w("## Roles and instruments")
    w("")
    w("`node.roles` lists any of " + ", ".join(f"`{r}`" for r in ns["ROLES"]) + ". A role "
      "needs instruments of these kinds (any one of each group):")
    w("")
    w("| role | needs |")
    w("|---|---|")
    for role, needs in ns["ROLE_NEEDS"].items():
        w(f"| `{role}` | " + "; ".join(" or ".join(f"`{k}`" for k in g) for g in needs) + " |")
    w("")
    kinds = importlib.import_module(KINDS_MODULE).KINDS
    w("`[instruments.<name>].kind` is one of these (the registry of instrument kinds, "
      f"`{KINDS_MODULE}`); the address says where the instrument is, the driver is what the "
      "daemon opens (time taggers: " + ", ".join(f"`{k}`" for k in ns["TAGGER_KINDS"]) + "):")
    w("")
    w("| kind | instrument | address | driver |")
    w("|---|---|---|---|")
    for kind, (address, driver) in ns["INSTRUMENT_KINDS"].items():
        w(f"| `{kind}` | {_cell(kinds[kind].description)} | {_cell(address)} | `{driver}` |")
    w("")
    if general:
        w("Rules across tables:")
        w("")
        for g in dict.fromkeys(general):
            w(f"- {_cell(g)}")
        w("")
    for sec in top:
        w(f"## `{sec.title}`")
        w("")
        if sec.header_comment:
            w(_cell(sec.header_comment[0].upper() + sec.header_comment[1:]) + ".")
            w("")
        for para in sec.intro:
            w(para)
            w("")
        if sec.id.endswith(".options"):
            w("A free-form table of keyword arguments for the instrument's driver. For a time "
              "tagger these keys configure its stream instead: "
              + ", ".join(f"`{k}`" for k in instruments.TAGGER_OPTIONS) + ".")
            w("")
            continue
        if not sec.keys:
            continue
        w("| key | type | default | allowed | meaning |")
        w("|---|---|---|---|---|")
        for k in sec.keys.values():
            default = k.default or ("required" if k.required and not k.optional
                                    else "optional" if k.optional else "")
            if k.optional and default.startswith(("the only such instrument (required",
                                                  "required")):
                default = "optional"
            needs = [c for c in k.checks if c.startswith("is required")]
            if needs:
                default = needs[0].removeprefix("is ")
                k.checks = [c for c in k.checks if c != needs[0]]
            if f"{sec.id}.{k.name}" in {s.id for s in sections}:
                k.type, k.meaning = "table", k.meaning or f"see `[{sec.id}.{k.name}]` below"
            meaning = k.meaning.replace(   # the constant is the table above
                "see INSTRUMENT_KINDS", "see [the kinds table](#roles-and-instruments)")
            w(f"| `{k.name}` | {_cell(k.type)} | {_cell(default)} | "
              f"{_cell('; '.join(k.allowed))} | {_cell(meaning)} |")
        w("")
        checks: dict[str, list[str]] = {}      # one line per rule, naming all its keys
        for k in sec.keys.values():
            for c in k.checks:
                label, text = (c.split(": ", 1) if c.startswith("`") else (f"`{k.name}`", c))
                checks.setdefault(text, []).append(label)
        for c in sec.checks:
            label, text = c.split(": ", 1)
            checks.setdefault(text, []).append(label)
        if checks:
            w("Also checked:")
            w("")
            for text, labels in checks.items():
                w(f"- {', '.join(dict.fromkeys(labels))}: {_cell(text)}")
            w("")
    kme = importlib.import_module(KME_MODULE)
    w("## `[kme]`")
    w("")
    w(f"The node's key management entity: ETSI GS QKD 014 key delivery from its key store "
      f"([Keys for encryptors](../integrators/key-delivery.md)). Read by `{KME_MODULE}`; its "
      "layout:")
    w("")
    w("```toml")
    w(textwrap.dedent(inspect.getdoc(kme).split("::", 1)[1].split("\n\n", 2)[1]).rstrip())
    w("```")
    w("")
    w("## Annotated example")
    w("")
    w(f"Every key in one file, as `{CONFIG_MODULE}` documents it (a node uses only the tables "
      "of its roles):")
    w("")
    w("```toml")
    w(extra["block"])
    w("```")
    return "\n".join(out) + "\n"


def check_notes() -> list[str]:
    """Problems with :data:`NOTES`: a note for a key no section reads, or one the code
    already explains (then the note is stale and must go)."""
    sections, _, _ = collect()
    by_id = {s.id: s for s in sections}
    problems = []
    for (sid, name), text in NOTES.items():
        sec = by_id.get(sid)
        if sec is None or name not in sec.allowed:
            problems.append(f"NOTES[{sid!r}, {name!r}]: the parser reads no such key")
        elif sec.keys[name].meaning != text:
            problems.append(f"NOTES[{sid!r}, {name!r}]: the code explains this key now "
                            f"({sec.keys[name].meaning!r}); delete the note")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help=f"compare with {PAGE.relative_to(PAGE.parents[2])} instead of "
                             f"printing; exit 1 if it differs")
    args = parser.parse_args(argv)
    page = render()
    if not args.check:
        sys.stdout.write(page)
        return 0
    problems = check_notes()
    if not PAGE.exists() or PAGE.read_text(encoding="utf-8") != page:
        problems.append(f"{PAGE} is stale: run python docs/gen_config_reference.py > "
                        f"docs/operators/config-reference.md")
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
