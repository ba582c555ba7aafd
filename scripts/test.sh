#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite with ctest:
# C unit tests, integration tests against the real binaries, style checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh --test
# Debian's python3 has python3-zmq; a pyenv shim on PATH would not.
export CCM_PYTHON=/usr/bin/python3
ctest --test-dir build --output-on-failure -j2 --timeout 600
