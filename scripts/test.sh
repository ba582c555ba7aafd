#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite with ctest:
# C unit tests, integration tests against the real binaries, style checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh --test
# The real Claude Code CLI (npm), which the end-to-end tests drive offline;
# with it installed, its tests must run, not skip.
bash scripts/install-claude.sh
export CCM_REQUIRE_CLAUDE=1
# Chromium and playwright-core for the browser test (tests/integration/test_web_ui.py):
# installed, that test must run, not skip.
export CCM_BROWSER_DIR=${CCM_BROWSER_DIR:-$HOME/.cache/ccm/browser-test}
bash scripts/install-browser.sh
export CCM_REQUIRE_BROWSER=1
# Debian's python3 has python3-zmq; a pyenv shim on PATH would not.
export CCM_PYTHON=/usr/bin/python3
ctest --test-dir build --output-on-failure -j2 --timeout 600
