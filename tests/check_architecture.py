"""Architecture checks beyond the import contracts (``.importlinter``), run by
tests/static_checks.sh:

* no import cycle between modules, type-checking imports included (Tarjan's strongly connected
  components on grimp's import graph);
* no private name imported from another module (``from m import _x``), and no private module
  imported from outside its package (``qnode.hal_sim._validate`` only within ``qnode.hal_sim``);
* every dotted cross-reference in a docstring or comment (``:func:`~.estimators.basis_qber```,
  ``:class:`qnode.daemon.klink.memory.LinkMemory```) names something that exists, resolved as
  Sphinx does: an absolute name by import, a leading dot by suffix over every module. A moved or
  renamed module leaves no reference behind.

``--summary`` prints the modules per package as well. Exit 1 on any finding.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import re
import sys
from collections import defaultdict
from pathlib import Path

import grimp

PACKAGES = ("qnode.native", "qnode.drivers", "qnode.hal_sim", "qnode.daemon", "qnode.client")
ROOT = Path(__file__).resolve().parent.parent
FOLDER = {"qnode.native": "native", "qnode.drivers": "drivers", "qnode.hal_sim": "hal_sim",
          "qnode.daemon": "daemon", "qnode.client": "client"}


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(
                        child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def module_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    for pkg, folder in FOLDER.items():
        if rel.parts[0] == folder:
            parts = [pkg, *rel.with_suffix("").parts[1:]]
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join(parts)
    raise ValueError(path)


def private_imports() -> list[str]:
    found = []
    for folder in FOLDER.values():
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = module_of(path)
            is_pkg = path.name == "__init__.py"
            package = module if is_pkg else module.rpartition(".")[0]
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom):
                    continue
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    parts = full.split(".")
                    for i, part in enumerate(parts[:-1]):
                        if part.startswith("_") and not part.startswith("__"):
                            owner = ".".join(parts[:i])
                            if not (package + ".").startswith(owner + "."):
                                found.append(f"{where}: {full} (private module {part} of {owner})")
                    name = alias.name
                    if name.startswith("_") and not name.startswith("__") and source != module:
                        # a private module of one's own package is fine; a private name of
                        # another module is not
                        if not (ROOT / "/".join([FOLDER[".".join(source.split(".")[:2])],
                                                 *source.split(".")[2:], name + ".py"])).exists():
                            found.append(f"{where}: {full} (private name of {source})")
                        elif not (package + ".").startswith(source + "."):
                            found.append(f"{where}: {full} (private module of {source})")
    return found


REFERENCE = re.compile(r":(?:func|meth|class|data|attr|mod|exc|obj):`~?([A-Za-z_][\w.]*|\.[\w.]+)`")


def _attr_path(obj: object, parts: list[str]) -> bool:
    """``obj.parts[0].parts[1]…`` exists; the last part may be an instance attribute that a class
    assigns (``self.<name> =`` or annotates in its body)."""
    for k, attr in enumerate(parts):
        if hasattr(obj, attr):
            obj = getattr(obj, attr)
            continue
        if k == len(parts) - 1 and inspect.isclass(obj):
            source = inspect.getsource(obj)
            return re.search(rf"self\.{attr}\b\s*(:[^=]*)?=|^\s+{attr}\s*:", source, re.M) \
                is not None
        return False
    return True


def _resolves(name: str, here: str, modules: list[str]) -> bool:
    """``name`` (``a.b.c``) resolves as Sphinx's Python domain would: in the referring module
    ``here``, as an importable module or a path below one, or by suffix (a leading dot) below
    any module of ``modules``."""
    parts = name.lstrip(".").split(".")
    if _attr_path(importlib.import_module(here), parts):
        return True
    for i in range(len(parts), 0, -1):
        try:
            if _attr_path(importlib.import_module(".".join(parts[:i])), parts[i:]):
                return True
        except ImportError:
            pass
    for m in modules:
        for i in range(len(parts)):
            if (i == 0 or m.endswith("." + ".".join(parts[:i]))) and \
                    _attr_path(importlib.import_module(m), parts[i:]):
                return True
    return False


def dangling_references(graph: grimp.ImportGraph) -> list[str]:
    """Dotted Sphinx references in the packages' sources that name nothing (bare names, which
    are left to the reader)."""
    modules = sorted(graph.modules)
    found = []
    for folder in FOLDER.values():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                for m in REFERENCE.finditer(line):
                    name = m[1]
                    if "." in name and not _resolves(name, module_of(path), modules):
                        found.append(f"{path.relative_to(ROOT)}:{lineno}: {m[0]}")
    return found


def summary(graph: grimp.ImportGraph) -> None:
    per: dict[str, int] = defaultdict(int)
    for m in graph.modules:
        parts = m.split(".")
        if len(parts) > 3:          # a module of a subpackage: qnode.hal_sim.twins.tc200
            key = ".".join(parts[:3])
        elif parts[1] == "daemon":  # the daemon's top-level modules each stand alone
            key = m
        else:
            key = ".".join(parts[:2])
        per[key] += 1
    for key in sorted(per):
        print(f"  {key:32s} {per[key]:3d} modules")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summary", action="store_true", help="print modules per package")
    args = ap.parse_args()
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    bad = 0
    found_cycles = cycles(graph)
    print(f"import cycles: {len(found_cycles)}")
    for comp in found_cycles:
        print("  cycle: " + " <-> ".join(comp))
        bad += 1
    private = private_imports()
    print(f"private names imported across modules: {len(private)}")
    for p in private:
        print("  " + p)
        bad += 1
    dangling = dangling_references(graph)
    print(f"docstring references that name nothing: {len(dangling)}")
    for d in dangling:
        print("  " + d)
        bad += 1
    if args.summary:
        summary(graph)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
