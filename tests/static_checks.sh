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
    -p qnode.daemon.qkd
    -p qnode.daemon.kme
    -p qnode.daemon.linklayer
    -p qnode.daemon.bus
    -p qnode.daemon.tools
    -m qnode.daemon.logs
    -p qnode.daemon.runtime
    -p qnode.daemon.klink
    -p qnode.daemon.acquisition
    -p qnode.daemon.apps
    -p qnode.daemon.routing
    -p qnode.daemon.roles
    -m qnode.daemon.node
    -m qnode.daemon.cli
    -p qnode.client
)
echo "== mypy ${MYPY_TARGETS[*]}"
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/qnode"
for d in daemon drivers native hal_sim client; do ln -s "$ROOT/$d" "$tree/qnode/$d"; done
(cd "$tree" && "$ROOT/.venv/bin/mypy" --config-file "$ROOT/mypy.ini" \
    --cache-dir "$ROOT/.mypy_cache" --python-executable "$ROOT/.venv/bin/python" \
    "${MYPY_TARGETS[@]}")

# The documentation (mkdocs.yml, docs/): a broken link or anchor, or a page left out of the
# navigation, fails the strict build. Built into the temporary tree, so nothing is left behind.
# (No --quiet: it hides the warnings, and then --strict has nothing to fail on.)
echo "== mkdocs build --strict"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --config-file "$ROOT/mkdocs.yml" \
    --site-dir "$tree/site"

# The AsyncAPI document of the MQTT contract (docs/integrators/asyncapi.yaml): generated from the
# code by docs/gen_asyncapi.py (stale: fail), then validated by the official AsyncAPI CLI (the
# spec's JSON Schema, the references, the payload schemas, the CLI's ruleset; warnings fail
# too). tests/run.sh installs the CLI pinned by tests/asyncapi/package-lock.json. Its usage
# metrics and update check are off (a config file in the temporary tree, an environment flag).
echo "== asyncapi validate docs/integrators/asyncapi.yaml"
.venv/bin/python docs/gen_asyncapi.py --check
ASYNCAPI=tests/asyncapi/node_modules/.bin/asyncapi
if [ ! -x "$ASYNCAPI" ]; then
    echo "error: the AsyncAPI CLI is not installed ($ASYNCAPI): run" \
         "npm ci --prefix tests/asyncapi (Node.js >= 20; tests/run.sh does)" >&2
    exit 1
fi
echo '{"analyticsEnabled":"false","infoMessageShown":"true","userID":"qnode-ci"}' \
    > "$tree/asyncapi-analytics.json"
ASYNCAPI_METRICS_CONFIG_PATH="$tree/asyncapi-analytics.json" ASYNCAPI_SKIP_NEW_VERSION_CHECK=true \
    "$ASYNCAPI" validate --fail-severity warn docs/integrators/asyncapi.yaml
