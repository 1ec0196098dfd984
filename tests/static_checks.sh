#!/usr/bin/env bash
# Static checks that fail the run: ruff (lint, import order, private reach-ins), the import
# contracts (.importlinter), no import cycles, no private names imported across modules and no
# docstring reference to a missing name (tests/check_architecture.py), mypy on the packages
# listed below, and a strict build of the docs. Run by tests/run.sh before the tests, so by CI.
#   bash tests/static_checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

echo "== ruff"
.venv/bin/ruff check .

echo "== import contracts (.importlinter)"
.venv/bin/lint-imports --no-cache

echo "== import cycles, private names, docstring references (tests/check_architecture.py)"
.venv/bin/python tests/check_architecture.py --summary

# The packages that type-check cleanly; a package joins once it does.
MYPY_TARGETS=(
    -p qnode.native
    -p qnode.drivers
    -p qnode.daemon.quantum
    -p qnode.daemon.linklayer
    -p qnode.daemon.bus
    -p qnode.daemon.tools
    -m qnode.daemon.logs
    -p qnode.daemon.runtime
    -p qnode.daemon.klink
    -p qnode.daemon.acquisition
    -p qnode.daemon.apps
    -p qnode.daemon.roles
    -m qnode.daemon.node
    -m qnode.daemon.cli
)
echo "== mypy ${MYPY_TARGETS[*]}"
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/qnode"
for d in daemon drivers native hal_sim; do ln -s "$ROOT/$d" "$tree/qnode/$d"; done
(cd "$tree" && "$ROOT/.venv/bin/mypy" --config-file "$ROOT/mypy.ini" \
    --cache-dir "$ROOT/.mypy_cache" --python-executable "$ROOT/.venv/bin/python" \
    "${MYPY_TARGETS[@]}")

# The documentation (mkdocs.yml, docs/): a broken link or anchor, or a page left out of the
# navigation, fails the strict build. Built into the temporary tree, so nothing is left behind.
# (No --quiet: it hides the warnings, and then --strict has nothing to fail on.)
echo "== mkdocs build --strict"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --config-file "$ROOT/mkdocs.yml" \
    --site-dir "$tree/site"
