#!/usr/bin/env bash
# Install hcast with its test extras and run the test suite.
# This is the README's test command; .ci/run calls it too.
set -euo pipefail
cd "$(dirname "$0")/.."

# System data the tests read: Fashion-MNIST and WordNet (Debian packages).
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -d /usr/share/wordnet ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq dataset-fashion-mnist wordnet-base >/dev/null
    fi
fi

PY=${PYTHON:-python3}
# torch 2.14.1 + torchvision 0.29.1 (the CUDA build also runs on the CPU).
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
"$PY" -m pip install -q -e ".[test]"
# one pytest worker per core (pytest-xdist), whole test files per worker (module fixtures built once)
exec "$PY" -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-auto}" --dist loadfile "$@"
