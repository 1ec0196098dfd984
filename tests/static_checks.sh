#!/usr/bin/env bash
# Static checks that fail the run: ruff (lint and import order) and mypy on the packages
# listed below. Run by tests/run.sh before the tests, so by CI.
#   bash tests/static_checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

echo "== ruff"
.venv/bin/ruff check .

# The packages that type-check cleanly; a package joins once it does.
MYPY_TARGETS=(
    -p qnode.native
    -m qnode.daemon.linklayer
    -m qnode.daemon.ll_messages
)
echo "== mypy ${MYPY_TARGETS[*]}"
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/qnode"
for d in daemon drivers native hal_sim; do ln -s "$ROOT/$d" "$tree/qnode/$d"; done
(cd "$tree" && "$ROOT/.venv/bin/mypy" --config-file "$ROOT/mypy.ini" \
    --cache-dir "$ROOT/.mypy_cache" --python-executable "$ROOT/.venv/bin/python" \
    "${MYPY_TARGETS[@]}")
