#!/usr/bin/env bash
# Install what the test suite needs into ./.venv and run the whole suite.
#   bash tests/run.sh [pytest arguments]
# Exits 0 only when tests ran and all passed (pytest exits 5 when it collects nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
echo "== installing qnode (builds the C core) and the test requirements"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/qnode info

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    # The MQTT tests run a real broker (Debian's mosquitto); install it where it is missing.
    echo "== installing mosquitto (the MQTT tests start their own brokers on loopback)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null
fi

# The AsyncAPI CLI: tests/static_checks.sh validates docs/integrators/asyncapi.yaml with it.
# Installed once into tests/asyncapi/node_modules, pinned by tests/asyncapi/package-lock.json
# (again when the lock file is newer than the install).
NPM_DIR=tests/asyncapi
if [ ! -x $NPM_DIR/node_modules/.bin/asyncapi ] \
        || [ $NPM_DIR/package-lock.json -nt $NPM_DIR/node_modules/.package-lock.json ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "error: npm not found. The static checks validate docs/integrators/asyncapi.yaml" \
             "with the AsyncAPI CLI (@asyncapi/cli): install Node.js >= 20 with npm, then" \
             "run: npm ci --prefix tests/asyncapi" >&2
        exit 1
    fi
    echo "== installing the AsyncAPI CLI (npm ci --prefix tests/asyncapi: a few minutes, once)"
    npm ci --prefix $NPM_DIR --loglevel=error
fi

echo "== static checks"
bash tests/static_checks.sh

echo "== running the test suite"
exec .venv/bin/python -m pytest "$@"
