"""The documentation cannot drift from the code: the config reference is what the config code
generates, every link-layer message and field is documented, and the README stays a front door
(short, the quick start verbatim, links only into the repository and to headings that exist).
The docs build itself (``mkdocs build --strict``) runs in tests/static_checks.sh."""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import re
import sys
import unicodedata
from pathlib import Path
from types import ModuleType

import pytest

from qnode.daemon.linklayer import messages as ll_messages

from support import REPO

ROOT = REPO
DOCS = ROOT / "docs"
README = ROOT / "README.md"

#: the two quick-start commands, exactly as users copy them
QUICK_START = (
    "python3 -m venv .venv && .venv/bin/pip install '.[demo]' && .venv/bin/qnode demo",
    "bash tests/run.sh",
)
README_MAX_LINES = 120


@functools.cache
def _generator() -> ModuleType:
    """docs/gen_config_reference.py, imported by path (docs/ is not a package)."""
    name = "qnode_docs_gen_config_reference"
    spec = importlib.util.spec_from_file_location(name, DOCS / "gen_config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module     # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (mkdocs' default) gives a heading."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _headings(path: Path) -> list[str]:
    """The Markdown headings of ``path``, outside fenced code blocks."""
    out, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            out.append(line.lstrip("#").strip())
    return out


def _links(text: str) -> list[str]:
    """Targets of the Markdown links in ``text`` (code spans and blocks left out)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


# --------------------------------------------------------------------------- config reference

def test_config_reference_is_generated_from_the_config_code() -> None:
    page = DOCS / "operators" / "config-reference.md"
    assert page.read_text(encoding="utf-8") == _generator().render(), (
        "docs/operators/config-reference.md is stale: run "
        ".venv/bin/python docs/gen_config_reference.py > docs/operators/config-reference.md")


def test_config_reference_notes_are_needed_and_name_real_keys() -> None:
    assert _generator().check_notes() == []


def test_config_reference_covers_every_key_the_parser_reads() -> None:
    gen = _generator()
    sections, _, _ = gen.collect()
    page = (DOCS / "operators" / "config-reference.md").read_text(encoding="utf-8")
    for section in sections:
        if not section.id:
            continue
        assert f"## `{section.title}`" in page, section.title
        for key in section.allowed:
            assert f"| `{key}` |" in page, f"{section.title} {key}"


def test_config_reference_check_mode_passes() -> None:
    assert _generator().main(["--check"]) == 0


# --------------------------------------------------------------------------- application messages

def test_application_messages_page_is_generated_from_the_message_classes() -> None:
    """docs/integrators/application-messages.md is what docs/gen_app_messages.py renders from
    the classes the node validates with; every message and field is on it."""
    name = "qnode_docs_gen_app_messages"
    spec = importlib.util.spec_from_file_location(name, DOCS / "gen_app_messages.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    sys.modules[name] = gen
    spec.loader.exec_module(gen)
    page = (DOCS / "integrators" / "application-messages.md").read_text(encoding="utf-8")
    assert page == gen.render(), (
        "docs/integrators/application-messages.md is stale: run .venv/bin/python "
        "docs/gen_app_messages.py > docs/integrators/application-messages.md")
    from qnode.daemon.apps.peer import PEER_TYPES
    from qnode.daemon.apps.protocol import REPLY_TYPES, REQUEST_TYPES, message_schema
    for cls in [*REQUEST_TYPES.values(), *REPLY_TYPES.values(), *PEER_TYPES.values()]:
        assert f"### `{cls.TYPE}`" in page, cls.TYPE
        for field in message_schema(cls)["properties"]:
            assert field == "type" or f"| `{field}` |" in page, (cls.TYPE, field)


# --------------------------------------------------------------------------- messages

def _message_sections() -> dict[str, str]:
    """The text under each ``### `TYPE` `` heading of docs/integrators/messages.md."""
    text = (DOCS / "integrators" / "messages.md").read_text(encoding="utf-8")
    parts = re.split(r"^#{2,3} ", text, flags=re.M)
    out = {}
    for part in parts:
        m = re.match(r"`([A-Za-z_]+)`", part)
        if m:
            out[m.group(1)] = part
    return out


@pytest.mark.parametrize("cls", sorted(ll_messages.MESSAGE_TYPES.values(), key=lambda c: c.TYPE),
                         ids=lambda c: c.TYPE)
def test_every_link_layer_message_and_field_is_documented(cls: type) -> None:
    sections = _message_sections()
    assert cls.TYPE in sections, f"docs/integrators/messages.md has no section `{cls.TYPE}`"
    if cls is ll_messages.Herald:   # its wire form, not its arrays
        fields = [*ll_messages.Herald._FIELDS, *ll_messages.Herald._EPOCH_FIELDS]
    else:
        fields = [f.name for f in dataclasses.fields(cls)]
    missing = [f for f in fields if f"`{f}`" not in sections[cls.TYPE]]
    assert not missing, f"{cls.TYPE}: fields not documented: {missing}"


# --------------------------------------------------------------------------- README

def test_readme_is_a_short_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_readme_has_the_quick_start_commands_verbatim() -> None:
    text = README.read_text(encoding="utf-8")
    for command in QUICK_START:
        assert re.search(rf"^{re.escape(command)}(\s|$)", text, re.M), command


def test_readme_links_stay_in_the_repository_and_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text), "README.md must not link outside the repository"
    links = _links(text)
    assert links
    for link in links:
        target, _, anchor = link.partition("#")
        path = (README.parent / target).resolve() if target else README
        assert path.is_file() and ROOT in path.parents, link
        if anchor:
            assert anchor in {_slug(h) for h in _headings(path)}, f"{link}: no such heading"


# --------------------------------------------------------------------------- no tracker talk

# tracker issues, shared notes, and citations of documents that are not in the repository (a
# design note, notes of anchor values); spelt with character classes so that a search of the
# code for those citations does not find this guard
_TRACKER = re.compile(r"\bissues? #?\d+|DESIG[N](\.md)? ?§|_ancho[r]s\.md|\.\./shared/|"
                      r"ancho[r]s §", re.I)


def test_docs_speak_of_the_product_not_the_tracker() -> None:
    for path in [README, *sorted(DOCS.rglob("*.md"))]:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not _TRACKER.search(line), f"{path.relative_to(ROOT)}:{i}: {line}"
